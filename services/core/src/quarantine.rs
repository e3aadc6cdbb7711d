//! Records a service can never process — a handler that keeps failing, an
//! item over DynamoDB's size limit, a record over Kafka's — are set aside
//! instead of retried for ever (which would freeze their partition for every
//! tenant): copied as they are to a quarantine topic, with why, where from
//! and which service in the headers, and then counted as done.
//!
//! The router's undecodable events go to `<ns>.events.invalid` the same way;
//! everything else goes to `<ns>.quarantine`. Both keep records as long as
//! the events topic (the replay window), for an operator to inspect and, once
//! the cause is fixed, write back.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::kafka::KafkaProducer;
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;

/// Why a record cannot be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// A short, stable reason (a metric label): `handler_failed`,
    /// `item_too_large`, `record_too_large`, …
    pub reason: &'static str,
    /// What went wrong, for the operator.
    pub detail: String,
}

impl Poison {
    /// A poison record for `reason`.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// The headers a quarantined copy of `message` carries: the reason, the
/// service that set it aside (if named) and the source position first, then
/// the record's own headers. The router's `<ns>.events.invalid` copies carry
/// the same, without the service.
pub fn headers(message: &OwnedMessage, service: Option<&str>, poison: &Poison) -> Vec<(String, Vec<u8>)> {
    let mut headers = vec![
        ("triggers-error-reason".to_owned(), poison.reason.as_bytes().to_vec()),
        ("triggers-error-message".to_owned(), poison.detail.as_bytes().to_vec()),
    ];
    if let Some(service) = service {
        headers.push(("triggers-service".to_owned(), service.as_bytes().to_vec()));
    }
    headers.extend([
        ("triggers-source-topic".to_owned(), message.topic().as_bytes().to_vec()),
        (
            "triggers-source-partition".to_owned(),
            message.partition().to_string().into_bytes(),
        ),
        (
            "triggers-source-offset".to_owned(),
            message.offset().to_string().into_bytes(),
        ),
    ]);
    if let Some(original) = message.headers() {
        for header in original.iter() {
            if let Some(value) = header.value {
                headers.push((header.key.to_owned(), value.to_vec()));
            }
        }
    }
    headers
}

/// Where a service sets its poison records aside.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // Holds a producer without Debug.
pub struct Quarantine {
    producer: Producer,
    topic: String,
    service: &'static str,
}

/// The producer of a quarantine: the service's own, or one made at the
/// first poison record (an idle producer costs CPU for nothing).
#[derive(Clone)]
enum Producer {
    Shared(KafkaProducer),
    Lazy(Box<KafkaConfig>, Arc<Mutex<Option<KafkaProducer>>>),
}

impl Quarantine {
    /// `service`'s quarantine on `topic`, written with `producer`.
    pub fn new(producer: KafkaProducer, topic: String, service: &'static str) -> Self {
        Self {
            producer: Producer::Shared(producer),
            topic,
            service,
        }
    }

    /// `service`'s quarantine on `topic`, with a producer of its own made
    /// when the first record is set aside.
    pub fn lazy(kafka: &KafkaConfig, topic: String, service: &'static str) -> Self {
        Self {
            producer: Producer::Lazy(Box::new(kafka.clone()), Arc::default()),
            topic,
            service,
        }
    }

    fn producer(&self) -> Result<KafkaProducer, crate::kafka::ClientError> {
        match &self.producer {
            Producer::Shared(producer) => Ok(producer.clone()),
            Producer::Lazy(kafka, made) => {
                let mut made = made.lock();
                if let Some(producer) = made.as_ref() {
                    return Ok(producer.clone());
                }
                let producer = crate::kafka::producer(kafka, "quarantine")?;
                *made = Some(producer.clone());
                Ok(producer)
            }
        }
    }

    /// The service that sets records aside (a metric label).
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The topic records go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Copies `message` to the quarantine topic, retrying until Kafka took
    /// it; `false` when shutdown came first (the record will be read again).
    pub async fn put(&self, message: &OwnedMessage, poison: &Poison, shutdown: &CancellationToken) -> bool {
        tracing::warn!(
            service = self.service,
            reason = poison.reason,
            detail = %poison.detail,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            quarantine = %self.topic,
            "a record that cannot be processed was set aside; inspect it in the quarantine topic"
        );
        let headers =
            headers(message, Some(self.service), poison)
                .iter()
                .fold(OwnedHeaders::new(), |all, (key, value)| {
                    all.insert(Header {
                        key,
                        value: Some(value.as_slice()),
                    })
                });
        let sent = crate::retry::retry("quarantine", shutdown, || async {
            let producer = self.producer().map_err(|e| e.to_string())?;
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e.to_string())
        })
        .await;
        if sent.is_some() {
            metrics::counter!("triggers_quarantined_total", "service" => self.service, "reason" => poison.reason)
                .increment(1);
        }
        sent.is_some()
    }
}
