//! Producing events to `<ns>.events`: Avro through the registry, keyed by
//! tenant (or `partition_key`), on the shared idempotent `acks=all`
//! producer. A send resolves only with Kafka's delivery report, within the
//! produce timeout; a full producer queue fails at once.
//!
//! An idempotent producer can get stuck: after a fatal error, or when the
//! broker no longer knows its producer id. With Tansu 0.6.0 it is worse: a
//! produce with a producer id from before a broker restart panics Tansu's
//! storage and wedges the broker. So when a delivery fails (not for a full
//! queue), the sink replaces its producer with a fresh one — at most every
//! two seconds — and purges the old one's queue instead of retrying it; the
//! purged requests get 503, which is the truth (they were not acknowledged).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureRecord, Producer};
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::KafkaConfig;
use triggers_core::event::Event;
use triggers_core::kafka::KafkaProducer;

use tracing::Instrument;

use crate::error::ApiError;

/// Consecutive failed deliveries after which the producer is replaced.
const FAILURES_BEFORE_RESET: u32 = 1;
/// The least time between two replacements.
const RESET_INTERVAL: Duration = Duration::from_secs(2);

/// Where accepted events go. Cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<Inner>,
}

struct Inner {
    producer: RwLock<KafkaProducer>,
    kafka: KafkaConfig,
    codec: AvroCodec,
    topic: String,
    failures: AtomicU32,
    last_reset: Mutex<Instant>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("topic", &self.inner.topic)
            .finish_non_exhaustive()
    }
}

fn producer(kafka: &KafkaConfig) -> Result<KafkaProducer, triggers_core::kafka::ClientError> {
    triggers_core::kafka::producer(kafka, "gateway")
}

impl EventSink {
    /// A sink producing to `topic`.
    pub fn new(
        kafka: &KafkaConfig,
        codec: AvroCodec,
        topic: String,
    ) -> Result<Self, triggers_core::kafka::ClientError> {
        Ok(Self {
            inner: Arc::new(Inner {
                producer: RwLock::new(producer(kafka)?),
                kafka: kafka.clone(),
                codec,
                topic,
                failures: AtomicU32::new(0),
                last_reset: Mutex::new(Instant::now().checked_sub(RESET_INTERVAL).unwrap_or_else(Instant::now)),
            }),
        })
    }

    /// Records waiting in the producer for a delivery report.
    pub fn queue_depth(&self) -> i32 {
        self.inner.producer.read().in_flight_count()
    }

    /// Sends `event` and waits for Kafka's acknowledgement.
    pub async fn send(&self, event: &Event, traceparent: Option<&str>) -> Result<(), ApiError> {
        let inner = &self.inner;
        let payload = inner
            .codec
            .encode(&inner.topic, Contract::Event, event)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot encode an event");
                reject("registry");
                ApiError::Unavailable("the schema registry is unavailable".to_owned())
            })?;
        let key = event.kafka_key();
        let (span, fields) = self.publish_span(&key, traceparent);
        let headers = fields.iter().fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(rdkafka::message::Header {
                key,
                value: Some(value.as_bytes()),
            })
        });
        let record = FutureRecord::to(&inner.topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        let producer = inner.producer.read().clone();
        let delivery = producer.send_result(record).map_err(|(e, _)| match e {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                reject("queue_full");
                ApiError::Unavailable("the gateway is at capacity".to_owned())
            }
            // Cannot happen with consistent settings (checked at start);
            // if it does, retrying would not help: the client must know.
            e if triggers_core::kafka::permanent_produce_error(&e).is_some() => {
                tracing::warn!(error = %e, "an event too large for Kafka");
                reject("too_large");
                self.too_large()
            }
            other => {
                tracing::warn!(error = %other, "cannot enqueue an event");
                reject("kafka");
                self.failed(&producer);
                ApiError::Unavailable("Kafka is unavailable".to_owned())
            }
        })?;
        // message.timeout.ms bounds the report; the outer timeout is a backstop.
        let timeout = inner.kafka.produce_timeout + Duration::from_secs(1);
        let started = std::time::Instant::now();
        let acknowledged = tokio::time::timeout(timeout, delivery).instrument(span.clone()).await;
        if let Ok(Ok(Ok(delivered))) = &acknowledged {
            span.record("messaging.destination.partition.id", delivered.partition);
            span.record("messaging.kafka.offset", delivered.offset);
        }
        metrics::histogram!(
            "triggers_gateway_produce_duration_seconds",
            "result" => if matches!(acknowledged, Ok(Ok(Ok(_)))) { "ok" } else { "error" }
        )
        .record(started.elapsed().as_secs_f64());
        match acknowledged {
            Ok(Ok(Ok(_))) => {
                inner.failures.store(0, Ordering::Relaxed);
                Ok(())
            }
            Ok(Ok(Err((e, _)))) if triggers_core::kafka::permanent_produce_error(&e).is_some() => {
                tracing::warn!(error = %e, "Kafka refused an event as too large");
                reject("too_large");
                Err(self.too_large())
            }
            Ok(Ok(Err((e, _)))) => {
                tracing::warn!(error = %e, "Kafka did not take an event");
                reject("kafka");
                self.failed(&producer);
                Err(ApiError::Unavailable(
                    "Kafka did not acknowledge the event in time".to_owned(),
                ))
            }
            Ok(Err(_)) | Err(_) => {
                reject("kafka");
                self.failed(&producer);
                Err(ApiError::Unavailable(
                    "Kafka did not acknowledge the event in time".to_owned(),
                ))
            }
        }
    }

    /// The producer span (messaging conventions) and the trace headers of
    /// the record: the span's context. In a trace that is not sampled, no
    /// span: the request's own (unsampled) context goes, so nothing
    /// downstream builds spans either. Untraced, the client's traceparent
    /// goes as is.
    fn publish_span(&self, key: &str, traceparent: Option<&str>) -> (tracing::Span, Vec<(String, String)>) {
        let topic = &self.inner.topic;
        let request = tracing::Span::current();
        let (span, mut fields) = if triggers_core::kafka::trace_headers::is_sampled(&request) {
            let span = tracing::debug_span!(
                "publish",
                otel.name = %format!("{topic} publish"),
                otel.kind = "producer",
                messaging.system = "kafka",
                messaging.operation.type = "publish",
                messaging.destination.name = %topic,
                messaging.kafka.message.key = %key,
                messaging.destination.partition.id = tracing::field::Empty,
                messaging.kafka.offset = tracing::field::Empty,
                triggers.service = "gateway",
            );
            let fields = triggers_core::kafka::trace_headers::fields_of(&span);
            (span, fields)
        } else {
            (
                tracing::Span::none(),
                triggers_core::kafka::trace_headers::fields_of(&request),
            )
        };
        if fields.is_empty()
            && let Some(traceparent) = traceparent
        {
            fields.push(("traceparent".to_owned(), traceparent.to_owned()));
        }
        (span, fields)
    }

    /// An event Kafka can never take: the largest the gateway accepts.
    fn too_large(&self) -> ApiError {
        ApiError::PayloadTooLarge {
            limit: self
                .inner
                .kafka
                .max_record_bytes
                .saturating_sub(triggers_core::config::RECORD_MARGIN),
        }
    }

    /// Counts a failure of `producer`; replaces it when it is broken.
    fn failed(&self, producer: &KafkaProducer) {
        let inner = &self.inner;
        let failures = inner.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let fatal = producer.client().fatal_error();
        if fatal.is_none() && failures < FAILURES_BEFORE_RESET {
            return;
        }
        let mut last_reset = inner.last_reset.lock();
        if last_reset.elapsed() < RESET_INTERVAL {
            return;
        }
        match self::producer(&inner.kafka) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *inner.producer.write(), fresh);
                *last_reset = Instant::now();
                inner.failures.store(0, Ordering::Relaxed);
                metrics::counter!("triggers_gateway_producer_resets_total").increment(1);
                tracing::warn!(?fatal, failures, "replaced the Kafka producer");
                // Dropping purges the old producer's queue (its callers get
                // 503); destroying it may block, so not on this thread.
                std::thread::spawn(move || drop(old));
            }
            Err(e) => tracing::warn!(error = %e, "cannot create a new Kafka producer"),
        }
    }

    /// Waits for every queued record (shutdown).
    pub fn flush(&self) {
        let producer = self.inner.producer.read().clone();
        if let Err(e) = producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "producer did not flush");
        }
    }
}

fn reject(reason: &'static str) {
    metrics::counter!("triggers_gateway_events_rejected_total", "reason" => reason).increment(1);
}
