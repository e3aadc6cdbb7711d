//! The registry's log: reads `_schemas` from the beginning into [`State`],
//! keeps tailing it (other instances write there too), and appends records.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use triggers_core::config::KafkaConfig;
use triggers_core::kafka::ConsumerLog;
use triggers_core::kafka::KafkaProducer;

use crate::error::RegistryError;
use crate::state::{LogKey, State};

/// The log-backed state of one registry instance.
#[derive(Clone)]
pub struct SchemaLog {
    topic: String,
    state: Arc<RwLock<State>>,
    producer: KafkaProducer,
    consumer: Arc<StreamConsumer<ConsumerLog>>,
    /// The offset after the last applied record.
    applied: watch::Receiver<i64>,
    produce_timeout: Duration,
}

impl std::fmt::Debug for SchemaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaLog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl SchemaLog {
    /// Opens the log and starts tailing it until `shutdown`.
    pub fn open(kafka: &KafkaConfig, topic: &str, shutdown: CancellationToken) -> Result<Self, RegistryError> {
        let producer = triggers_core::kafka::producer(kafka, "registry")?;
        let mut consumer_config = triggers_core::kafka::base_config(kafka, "registry");
        consumer_config
            .set("group.id", format!("triggers-registry-{}", ulid_like()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", kafka.fetch_wait_max.as_millis().to_string());
        let consumer: StreamConsumer<ConsumerLog> = consumer_config
            .create_with_context(ConsumerLog::new("registry"))
            .map_err(RegistryError::Kafka)?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(RegistryError::Kafka)?;
        consumer.assign(&assignment).map_err(RegistryError::Kafka)?;
        let consumer = Arc::new(consumer);
        let state = Arc::new(RwLock::new(State::default()));
        let (applied_tx, applied) = watch::channel(0_i64);
        // Paced like every reader: a write of this registry wakes its own
        // tail at once (`pacing::wrote`), so an append is read back quickly.
        let pacer = triggers_core::pacing::Pacer::new(kafka);
        tokio::spawn(tail(consumer.clone(), pacer, state.clone(), applied_tx, shutdown));
        Ok(Self {
            topic: topic.to_owned(),
            state,
            producer,
            consumer,
            applied,
            produce_timeout: kafka.produce_timeout,
        })
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read())
    }

    /// Waits until every record written before this call is applied.
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), RegistryError> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let (_, high) =
            tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, 0, Duration::from_secs(5))).await??;
        self.wait_applied(high, timeout).await
    }

    /// Waits until the record at `offset - 1` and all before it are applied.
    async fn wait_applied(&self, offset: i64, timeout: Duration) -> Result<(), RegistryError> {
        let mut applied = self.applied.clone();
        tokio::time::timeout(timeout, applied.wait_for(|next| *next >= offset))
            .await
            .map_err(|_| RegistryError::Unavailable("the schema log did not catch up in time".to_owned()))?
            .map_err(|_| RegistryError::Unavailable("the schema log reader stopped".to_owned()))?;
        Ok(())
    }

    /// Appends a record and waits until it is applied (whether it won or not).
    pub async fn append(&self, key: &LogKey, value: Option<&[u8]>, timeout: Duration) -> Result<(), RegistryError> {
        let key = serde_json::to_vec(key)?;
        let mut record = FutureRecord::<Vec<u8>, [u8]>::to(&self.topic).key(&key).partition(0);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let delivery = self
            .producer
            .send(record, self.produce_timeout)
            .await
            .map_err(|(e, _)| RegistryError::Kafka(e))?;
        self.wait_applied(delivery.offset + 1, timeout).await
    }

    /// Flushes the producer (shutdown).
    pub fn flush(&self) {
        use rdkafka::producer::Producer;
        if let Err(e) = self.producer.flush(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "registry producer did not flush");
        }
    }
}

async fn tail(
    consumer: Arc<StreamConsumer<ConsumerLog>>,
    mut pacer: triggers_core::pacing::Pacer,
    state: Arc<RwLock<State>>,
    applied: watch::Sender<i64>,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            () = pacer.due() => {
                pacer.act(consumer.as_ref());
                continue;
            }
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                pacer.saw_record();
                let key = message.key().and_then(|k| serde_json::from_slice::<LogKey>(k).ok());
                if let Some(key) = key {
                    state.write().apply(&key, message.payload());
                } else {
                    tracing::warn!(
                        offset = message.offset(),
                        "ignoring a _schemas record without a valid key"
                    );
                }
                applied.send_replace(message.offset() + 1);
            }
            Err(KafkaError::PartitionEOF(_)) => pacer.saw_end(),
            Err(e) => {
                tracing::warn!(error = %e, "error reading the schema log; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn ulid_like() -> String {
    triggers_core::ids::RequestId::new().to_string()
}
