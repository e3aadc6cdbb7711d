//! The routing loop: `<ns>.events` in, deliveries and outcomes out.
//!
//! Records are read in order; for each event the delivery records are
//! enqueued in that order (so deliveries of one subscription keep the order of
//! its events), and the acknowledgements are awaited concurrently, up to
//! `max_in_flight` events. An event's offset is stored only when every record
//! it caused is acknowledged by Kafka, and only as part of the contiguous
//! done prefix of its partition. A failed produce is retried, never skipped.
//! A record that cannot be decoded, or names an unknown tenant, is copied to
//! `<ns>.events.invalid` with the reason in its headers, and routing goes on.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureRecord, Producer};
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, CodecError, Contract};
use triggers_core::config::TopicsConfig;
use triggers_core::consume::{AbortOnDrop, Joined, store_finished};
use triggers_core::delivery::{Delivery, Outcome};
use triggers_core::event::Event;
use triggers_core::handover::Handover;
use triggers_core::kafka::KafkaProducer;
use triggers_core::tenancy::StoreError;

use triggers_core::follower::Follower;

/// One record to produce.
#[derive(Debug, Clone)]
struct OutRecord {
    topic: String,
    key: String,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

impl OutRecord {
    fn headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_slice()),
            })
        })
    }
}

/// Why a record went to quarantine.
struct Invalid {
    reason: &'static str,
    message: String,
}

/// Everything the loop needs.
#[allow(missing_debug_implementations)] // Holds clients without Debug.
pub struct Pipeline {
    /// Reads `<ns>.events` in the router's group.
    pub consumer: Arc<StreamConsumer<triggers_core::kafka::ConsumerLog>>,
    /// Writes deliveries, outcomes and quarantined records.
    pub producer: KafkaProducer,
    /// Avro.
    pub codec: AvroCodec,
    /// Topic names.
    pub topics: TopicsConfig,
    /// The subscription table.
    pub follower: Follower,
    /// Tenant existence.
    pub tenants: triggers_core::tenancy::TenantCache,
    /// Events whose records are awaited at once.
    pub max_in_flight: usize,
    /// Pauses the consumer while no events come (Tansu locally).
    pub pacer: triggers_core::pacing::Pacer,
    /// `kafka.max_record_bytes`.
    pub max_record_bytes: usize,
    /// Bytes of records being produced at once, across events (one event's
    /// records are always taken, however large): a 1 MB event to 1,000
    /// subscriptions is 1 GB of delivery records.
    pub max_in_flight_bytes: usize,
    /// How long an event waits for the subscription table to be fresh as
    /// of its acceptance (`router.freshness_wait_max`).
    pub freshness_wait_max: Duration,
    /// The per-event counters ([`Counters::register`]).
    pub counters: Counters,
}

/// The counters every event moves, registered once: a lookup by name
/// and labels per event costs a hash and a lock each time.
#[derive(Debug, Clone)]
pub struct Counters {
    routed: metrics::Counter,
    unmatched: metrics::Counter,
    invalid: metrics::Counter,
    deliveries: metrics::Counter,
}

impl Counters {
    /// `triggers_router_events_total` (`routed`, `unmatched`, `invalid`) and
    /// `triggers_router_deliveries_total`, from the recorder installed now.
    pub fn register() -> Self {
        Self {
            routed: metrics::counter!("triggers_router_events_total", "result" => "routed"),
            unmatched: metrics::counter!("triggers_router_events_total", "result" => "unmatched"),
            invalid: metrics::counter!("triggers_router_events_total", "result" => "invalid"),
            deliveries: metrics::counter!("triggers_router_deliveries_total"),
        }
    }
}

/// A source record's topic, partition and offset (-1: not done).
type Position = (String, i32, i64);

fn invalid(reason: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        reason,
        message: message.into(),
    }
}

/// Why an event record was not routed this time.
enum Unrouted {
    /// It never will be: quarantine it.
    Invalid(Invalid),
    /// A dependency failed (registry, DynamoDB): try again later.
    Later(RouteError),
}

/// A dependency failure that may pass.
#[derive(Debug, thiserror::Error)]
enum RouteError {
    #[error(transparent)]
    Codec(CodecError),
    #[error(transparent)]
    Store(StoreError),
}

impl Unrouted {
    /// An encoding failure is never the record's fault (it decoded; the
    /// records made from it use this build's schemas): a registry that
    /// refuses a schema is a deployment defect, which must stall the
    /// partition (lag alerts) rather than quarantine every event.
    fn encoding(e: CodecError) -> Self {
        Self::Later(RouteError::Codec(e))
    }
}

impl From<Invalid> for Unrouted {
    fn from(invalid: Invalid) -> Self {
        Self::Invalid(invalid)
    }
}

impl From<CodecError> for Unrouted {
    fn from(e: CodecError) -> Self {
        if e.is_retriable() {
            Self::Later(RouteError::Codec(e))
        } else {
            Self::Invalid(invalid(e.reason(), e.to_string()))
        }
    }
}

impl From<StoreError> for Unrouted {
    fn from(e: StoreError) -> Self {
        if e.is_retriable() {
            Self::Later(RouteError::Store(e))
        } else {
            Self::Invalid(invalid("tenant_lookup_failed", e.to_string()))
        }
    }
}

impl Pipeline {
    /// Runs until `shutdown`, then finishes the work in flight (at most
    /// `grace`), stores and commits offsets and flushes the producer.
    /// A partition revoked goes over drained: the records of its events
    /// still being produced are awaited (at most `grace`) and its offsets
    /// committed first ([`triggers_core::handover`]); what could not finish
    /// is routed again by the next owner, with the same delivery ids.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        let handover = self
            .consumer
            .context()
            .handover()
            .cloned()
            .unwrap_or_else(Handover::new);
        handover.set_limit(grace);
        let mut in_flight: FuturesUnordered<futures::future::BoxFuture<'static, (Joined, usize)>> =
            FuturesUnordered::new();
        let mut bytes_in_flight = 0usize;
        let in_flight_bytes = metrics::gauge!("triggers_router_in_flight_bytes");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((finished, bytes)) = in_flight.next(), if !in_flight.is_empty() => {
                    bytes_in_flight -= bytes;
                    in_flight_bytes.set(bytes_in_flight as f64);
                    store_finished(&self.consumer, finished);
                }
                () = self.pacer.due() => self.pacer.act(self.consumer.as_ref()),
                message = self.consumer.recv(), if in_flight.len() < self.max_in_flight
                    && (in_flight.is_empty() || bytes_in_flight < self.max_in_flight_bytes) => {
                    let message = match message {
                        Ok(message) => {
                            self.pacer.saw_record();
                            message.detach()
                        }
                        Err(e) if triggers_core::kafka::is_partition_eof(&e) => {
                            self.pacer.saw_end();
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "error reading events");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let span = triggers_core::kafka::trace_headers::process_span(&message, "router");
                    let Some(records) = self.route(&message, &shutdown).instrument(span).await else { break };
                    let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
                    handover.read(topic, partition, offset);
                    let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
                    bytes_in_flight += bytes;
                    in_flight_bytes.set(bytes_in_flight as f64);
                    // Its partition's token: a revoke stops its retries.
                    let stop = handover.started(topic, partition, &shutdown);
                    let sent = self.send(records, topic.to_owned(), partition, offset, stop);
                    // Its own task: it goes on (and the handover sees it
                    // end) while this loop waits in a rebalance callback.
                    let handover = handover.clone();
                    let task = AbortOnDrop::spawn(async move {
                        let (topic, partition, done) = sent.await;
                        let watermark = handover.finished(&topic, partition, offset, done >= 0);
                        (topic, partition, watermark)
                    });
                    in_flight.push(Box::pin(async move { (task.await, bytes) }));
                }
            }
        }
        // Finish what was started, within the grace period.
        let drain = async {
            while let Some((finished, _)) = in_flight.next().await {
                store_finished(&self.consumer, finished);
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("router stopped with work in flight; it will be routed again");
        }
        // What is left was given up: the revoke of closing waits for nothing.
        handover.set_limit(Duration::ZERO);
        triggers_core::consume::close(self.consumer, triggers_core::consume::CLOSE_LIMIT).await;
        // Blocking too: off the runtime's workers.
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "router producer did not flush"),
            Err(e) => tracing::warn!(error = %e, "router producer did not flush"),
        }
        tracing::info!("router stopped");
    }

    /// The records one event causes; `None` when shutting down first.
    async fn route(&self, message: &OwnedMessage, shutdown: &CancellationToken) -> Option<Vec<OutRecord>> {
        loop {
            match self.route_once(message).await {
                Ok(records) => return Some(records),
                Err(Unrouted::Invalid(invalid)) => {
                    metrics::counter!("triggers_router_invalid_events_total", "reason" => invalid.reason).increment(1);
                    self.counters.invalid.increment(1);
                    tracing::warn!(
                        reason = invalid.reason,
                        error = %invalid.message,
                        partition = message.partition(),
                        offset = message.offset(),
                        "quarantining an event record"
                    );
                    return Some(vec![self.quarantine(message, invalid)]);
                }
                Err(Unrouted::Later(retriable)) => {
                    tracing::warn!(error = %retriable, "cannot route yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Waits until the subscription table holds every change written before
    /// the event was accepted: its record's timestamp, set by the producer
    /// (the gateway's, when it accepted the event); without one, now.
    async fn await_fresh_table(&self, message: &OwnedMessage) {
        if self.freshness_wait_max.is_zero() {
            return;
        }
        let accepted = message
            .timestamp()
            .to_millis()
            .unwrap_or_else(triggers_core::event::now_ms);
        if !self.follower.fresh_at(accepted, self.freshness_wait_max).await {
            metrics::counter!("triggers_router_unfresh_routes_total").increment(1);
            tracing::debug!(
                partition = message.partition(),
                offset = message.offset(),
                "routing with a subscription table that may miss recent changes"
            );
        }
    }

    /// The records one event causes, or why not.
    async fn route_once(&self, message: &OwnedMessage) -> Result<Vec<OutRecord>, Unrouted> {
        let Some(payload) = message.payload() else {
            return Err(invalid("empty_record", "the record has no value").into());
        };
        // A delivery record carries the whole event: one from an event this
        // large (a Kafka-native producer's) could never be produced.
        if payload.len() + triggers_core::config::RECORD_MARGIN > self.max_record_bytes {
            return Err(invalid(
                "too_large",
                format!(
                    "the event record takes {} bytes; events may take at most {} (kafka.max_record_bytes less the record margin)",
                    payload.len(),
                    self.max_record_bytes
                        .saturating_sub(triggers_core::config::RECORD_MARGIN)
                ),
            )
            .into());
        }
        let event: Event = self.codec.decode(Contract::Event, payload).await?;
        if event.event_type.trim().is_empty() || event.source.trim().is_empty() {
            return Err(invalid("invalid_event", "type and source must not be empty").into());
        }
        if self.tenants.get(&event.tenant).await?.is_none() {
            return Err(invalid("unknown_tenant", format!("tenant {} does not exist", event.tenant)).into());
        }

        self.await_fresh_table(message).await;
        let matched = self.follower.table.read().matching(&event);
        // The records carry this process span's context (so the deliverer's
        // spans are its children); untraced, the record's own traceparent.
        let mut traceparent: Vec<(String, Vec<u8>)> =
            triggers_core::kafka::trace_headers::fields_of(&tracing::Span::current())
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
        if traceparent.is_empty() {
            traceparent = triggers_core::kafka::trace_headers::traceparent(message.headers())
                .map(|v| vec![("traceparent".to_owned(), v.to_vec())])
                .unwrap_or_default();
        }
        let outcome = Outcome::routing(&event, matched.iter().map(|c| c.subscription.id).collect());
        let event_key = event.id.to_string();
        let deliveries_topic = self.topics.deliveries();
        let mut records = Vec::with_capacity(matched.len() + 1);
        // Each delivery carries the event: the last one takes it, the
        // others a copy (one subscription, the common case: no copy).
        if let Some((last, others)) = matched.split_last() {
            for compiled in others {
                let delivery = Delivery::first(event.clone(), compiled.subscription.id);
                records.push(self.delivery_record(&delivery, &deliveries_topic, &traceparent).await?);
            }
            let delivery = Delivery::first(event, last.subscription.id);
            records.push(self.delivery_record(&delivery, &deliveries_topic, &traceparent).await?);
        }
        let outcomes_topic = self.topics.outcomes();
        let payload = self
            .codec
            .encode(&outcomes_topic, Contract::Outcome, &outcome)
            .await
            .map_err(Unrouted::encoding)?;
        records.push(OutRecord {
            topic: outcomes_topic,
            key: event_key,
            payload,
            headers: traceparent,
        });
        let counters = &self.counters;
        if matched.is_empty() {
            &counters.unmatched
        } else {
            &counters.routed
        }
        .increment(1);
        counters.deliveries.increment(matched.len() as u64);
        Ok(records)
    }

    /// A delivery's record on `topic`, keyed by its subscription.
    async fn delivery_record(
        &self,
        delivery: &Delivery,
        topic: &str,
        headers: &[(String, Vec<u8>)],
    ) -> Result<OutRecord, Unrouted> {
        let payload = self
            .codec
            .encode(topic, Contract::Delivery, delivery)
            .await
            .map_err(Unrouted::encoding)?;
        Ok(OutRecord {
            topic: topic.to_owned(),
            key: delivery.subscription_id.to_string(),
            payload,
            headers: headers.to_vec(),
        })
    }

    fn quarantine(&self, message: &OwnedMessage, invalid: Invalid) -> OutRecord {
        let poison = triggers_core::quarantine::Poison::new(invalid.reason, invalid.message);
        let headers = triggers_core::quarantine::headers(message, None, &poison);
        OutRecord {
            topic: self.topics.events_invalid(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        }
    }

    /// Enqueues `records` now (in order) and returns a future that resolves
    /// with the source position once Kafka acknowledged all of them (retrying
    /// failures), or with offset -1 when shutdown came first.
    fn send(
        &self,
        records: Vec<OutRecord>,
        topic: String,
        partition: i32,
        offset: i64,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = Position> + Send + 'static + use<> {
        let producer = self.producer.clone();
        let first: Vec<_> = records.iter().map(|r| enqueue(&producer, r)).collect();
        async move {
            let mut pending: Vec<(OutRecord, Option<triggers_core::kafka::DeliveryFuture>)> =
                records.into_iter().zip(first).collect();
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut failed = Vec::new();
                for (record, delivery) in pending {
                    let ok = match delivery {
                        Some(delivery) => matches!(delivery.await, Ok(Ok(_))),
                        None => false,
                    };
                    if !ok {
                        failed.push(record);
                    }
                }
                if failed.is_empty() {
                    return (topic, partition, offset);
                }
                metrics::counter!("triggers_router_produce_retries_total").increment(failed.len() as u64);
                tracing::warn!(records = failed.len(), "produce failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return (topic, partition, -1),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                pending = failed
                    .into_iter()
                    .map(|r| {
                        let delivery = enqueue(&producer, &r);
                        (r, delivery)
                    })
                    .collect();
            }
        }
    }
}

fn enqueue(producer: &KafkaProducer, record: &OutRecord) -> Option<triggers_core::kafka::DeliveryFuture> {
    let future_record = FutureRecord::to(&record.topic)
        .key(&record.key)
        .payload(&record.payload)
        .headers(record.headers());
    producer.send_result(future_record).ok()
}

#[cfg(test)]
mod tests {
    use triggers_core::dynamo::StoreErrorKind;

    use super::*;

    fn reason(unrouted: Unrouted) -> Option<&'static str> {
        match unrouted {
            Unrouted::Invalid(invalid) => Some(invalid.reason),
            Unrouted::Later(_) => None,
        }
    }

    #[test]
    fn undecodable_records_are_quarantined_with_their_reason() {
        assert_eq!(reason(CodecError::BadMagic.into()), Some("bad_magic_byte"));
        let invalid = CodecError::InvalidAvro {
            contract: Contract::Event,
            message: "truncated".to_owned(),
        };
        assert_eq!(reason(invalid.into()), Some("invalid_avro"));
    }

    #[test]
    fn store_failures_wait_unless_they_never_pass() {
        let throttled = StoreError::found("GetItem", "t_tenants", StoreErrorKind::Throttled, "slow down");
        assert_eq!(reason(throttled.into()), None);
        let invalid = StoreError::found("GetItem", "t_tenants", StoreErrorKind::Invalid, "bad key");
        assert_eq!(reason(invalid.into()), Some("tenant_lookup_failed"));
    }

    #[test]
    fn encoding_failures_always_wait() {
        assert_eq!(reason(Unrouted::encoding(CodecError::BadMagic)), None);
    }
}
