//! Triggers' producer: librdkafka's producer, one thread that serves its
//! delivery reports, and a future per record that resolves with the report.
//!
//! rdkafka's `FutureProducer` does the same, but its thread waits for reports
//! in 100 ms polls and spins through the last fraction of a millisecond of
//! each (the deadline rounds down to zero-millisecond polls): about 1 % of a
//! core per producer while nothing happens, five producers in the local
//! stack. Here the thread blocks in librdkafka for a second at a time. A
//! report wakes it at once, so no send waits longer for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use rdkafka::ClientConfig;
use rdkafka::client::Client;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage, ToBytes};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::util::Timeout;

use super::Context;

pub use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};

/// The delivery report of one queued record; `Err(Canceled)` only if the
/// producer was destroyed before librdkafka reported.
pub type DeliveryFuture = oneshot::Receiver<OwnedDeliveryResult>;

/// How long the report thread blocks in librdkafka at a time; it also bounds
/// how long the thread outlives the last handle of its producer.
const REPORT_WAIT: Duration = Duration::from_secs(1);

/// How often a send retries while librdkafka's queue is full.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(100);

/// The producer's [`Context`] hands each delivery report to the future of
/// its record.
impl ProducerContext for Context {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(message) => {
                crate::pacing::wrote(message.topic());
                Ok(Delivery {
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp: message.timestamp(),
                })
            }
            Err((error, message)) => Err((error.clone(), message.detach())),
        };
        // The sender is gone only when its send was abandoned (a dropped
        // future); nobody is waiting for the report then.
        let _ = report.send(owned);
    }
}

/// An idempotent producer shared by clones; see the module docs.
#[derive(Clone)]
pub struct KafkaProducer {
    shared: Arc<Shared>,
}

/// The producer and its report thread's stop flag; dropping the last handle
/// stops the thread, which then releases the producer.
struct Shared {
    base: Arc<BaseProducer<Context>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Not joined: the thread is blocked in librdkafka for up to
        // REPORT_WAIT, and this may run on an async worker.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("in_flight", &self.in_flight_count())
            .finish_non_exhaustive()
    }
}

impl KafkaProducer {
    /// A producer with `config` and its report thread.
    pub fn new(config: &ClientConfig) -> KafkaResult<Self> {
        let base = Arc::new(BaseProducer::from_config_and_context(config, Context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_base, thread_stop) = (base.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-reports".to_owned())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    thread_base.poll(REPORT_WAIT);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("cannot start the delivery report thread: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared { base, stop }),
        })
    }

    /// Queues `record` and waits for its delivery report. While librdkafka's
    /// queue is full it retries for up to `queue_timeout`, then reports
    /// `QueueFull`.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: impl Into<Timeout>,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let started = Instant::now();
        let queue_timeout = queue_timeout.into();
        let mut record = record;
        loop {
            match self.send_result(record) {
                Ok(report) => {
                    // The sender goes only with a report: librdkafka reports
                    // every queued record, purged ones included.
                    return match report.await {
                        Ok(result) => result,
                        Err(_) => Err((KafkaError::Canceled, unknown_record())),
                    };
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if match queue_timeout {
                        Timeout::Never => true,
                        Timeout::After(limit) => started.elapsed() < limit,
                    } =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_RETRY).await;
                }
                Err((error, back)) => {
                    let message = OwnedMessage::new(
                        back.payload.map(|p| p.to_bytes().to_vec()),
                        back.key.map(|k| k.to_bytes().to_vec()),
                        back.topic.to_owned(),
                        back.timestamp
                            .map_or(rdkafka::Timestamp::NotAvailable, rdkafka::Timestamp::CreateTime),
                        back.partition.unwrap_or(-1),
                        -1,
                        back.headers,
                    );
                    return Err((error, message));
                }
            }
        }
    }

    /// Queues `record` without waiting: the future resolves with its delivery
    /// report. A full queue is an error at once, with the record back.
    #[allow(clippy::result_large_err)] // the record comes back for a retry, as in rdkafka
    pub fn send_result<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<DeliveryFuture, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (sender, receiver) = oneshot::channel();
        let base = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(sender),
        };
        self.shared.base.send(base).map(|()| receiver).map_err(|(error, base)| {
            let record = FutureRecord {
                topic: base.topic,
                partition: base.partition,
                payload: base.payload,
                key: base.key,
                timestamp: base.timestamp,
                headers: base.headers,
            };
            (error, record)
        })
    }
}

/// The record of a report that never came.
fn unknown_record() -> OwnedMessage {
    OwnedMessage::new(
        None,
        None,
        String::new(),
        rdkafka::Timestamp::NotAvailable,
        -1,
        -1,
        None,
    )
}

impl Producer<Context> for KafkaProducer {
    fn client(&self) -> &Client<Context> {
        self.shared.base.client()
    }

    fn in_flight_count(&self) -> i32 {
        self.shared.base.in_flight_count()
    }

    fn flush<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.shared.base.flush(timeout)
    }

    fn purge(&self, flags: PurgeConfig) {
        self.shared.base.purge(flags);
    }

    fn init_transactions<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.shared.base.init_transactions(timeout)
    }

    fn begin_transaction(&self) -> KafkaResult<()> {
        self.shared.base.begin_transaction()
    }

    fn send_offsets_to_transaction<T: Into<Timeout>>(
        &self,
        offsets: &TopicPartitionList,
        cgm: &ConsumerGroupMetadata,
        timeout: T,
    ) -> KafkaResult<()> {
        self.shared.base.send_offsets_to_transaction(offsets, cgm, timeout)
    }

    fn commit_transaction<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.shared.base.commit_transaction(timeout)
    }

    fn abort_transaction<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.shared.base.abort_transaction(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer whose broker never answers (nothing listens on port 9).
    fn unreachable(message_timeout_ms: &str) -> KafkaProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("message.timeout.ms", message_timeout_ms)
            .set("log_level", "0");
        KafkaProducer::new(&config).unwrap()
    }

    #[test]
    fn a_record_that_cannot_be_delivered_gets_its_report() {
        let producer = unreachable("300");
        let started = Instant::now();
        let report = producer
            .send_result(FutureRecord::to("nowhere").key("k").payload("p"))
            .unwrap_or_else(|(e, _)| panic!("{e}"));
        match futures::executor::block_on(report) {
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), message))) => {
                assert_eq!(message.payload(), Some(&b"p"[..]));
            }
            other => panic!("expected a timeout with the record, got {other:?}"),
        }
        // Reported by the thread as soon as librdkafka gave up, not at the
        // end of its one-second wait (generous bound: a loaded machine).
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn a_full_queue_returns_the_record() {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("queue.buffering.max.messages", "1")
            .set("log_level", "0");
        let producer = KafkaProducer::new(&config).unwrap();
        let _first = producer
            .send_result(FutureRecord::to("nowhere").key("k").payload("one"))
            .unwrap_or_else(|(e, _)| panic!("{e}"));
        let result = futures::executor::block_on(
            producer.send(FutureRecord::to("nowhere").key("k").payload("two"), Duration::ZERO),
        );
        match result {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), message)) => {
                assert_eq!((message.topic(), message.payload()), ("nowhere", Some(&b"two"[..])));
            }
            other => panic!("expected QueueFull with the record, got {other:?}"),
        }
    }

    #[test]
    fn the_report_thread_ends_with_the_last_handle() {
        let producer = unreachable("300000");
        let clone = producer.clone();
        let base = Arc::downgrade(&producer.shared.base);
        drop(producer);
        std::thread::sleep(REPORT_WAIT * 2);
        assert!(base.upgrade().is_some(), "a clone still holds the producer");
        drop(clone);
        let deadline = Instant::now() + REPORT_WAIT * 5;
        while base.upgrade().is_some() {
            assert!(Instant::now() < deadline, "the report thread still holds the producer");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
