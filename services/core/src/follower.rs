//! Follows the compacted topic `<ns>.subscriptions` into a
//! [`SubscriptionTable`]: from the beginning, every partition, no consumer
//! group (every router instance needs the whole table), and on forever. It
//! is caught up once every partition has reached its end at least once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::codec::{AvroCodec, Contract};
use crate::config::KafkaConfig;
use crate::ids::SubscriptionId;
use crate::subscription::Subscription;
use crate::subscription_table::SubscriptionTable;

/// The follower could not start or catch up.
#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    /// Kafka refused.
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The metadata lookup's blocking task failed.
    #[error("the metadata lookup did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The subscription topic does not exist.
    #[error("topic {0} does not exist; provision it first")]
    NoTopic(String),
    /// The table was not read to its end in time.
    #[error("the subscription table did not catch up within {0:?}")]
    CatchUpTimeout(Duration),
    /// The follower stopped (shutdown) before it caught up.
    #[error("the subscription follower stopped before it caught up")]
    Stopped,
}

/// The live table and whether it has caught up.
#[derive(Clone)]
pub struct Follower {
    /// The table.
    pub table: Arc<RwLock<SubscriptionTable>>,
    caught_up: watch::Receiver<bool>,
    consumer: Arc<StreamConsumer<crate::kafka::ConsumerLog>>,
    topic: String,
    /// The next offset to apply, per partition.
    read_to: watch::Receiver<Vec<i64>>,
    /// Subscriptions whose deletion (tombstone) was applied.
    removed: Arc<RwLock<HashSet<SubscriptionId>>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("topic", &self.topic)
            .field("read_to", &*self.read_to.borrow())
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// Starts following `topic` until `shutdown`.
    pub async fn start(
        kafka: &KafkaConfig,
        topic: &str,
        codec: AvroCodec,
        service: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, FollowerError> {
        let consumer: StreamConsumer<crate::kafka::ConsumerLog> = crate::kafka::base_config(kafka, service)
            .set(
                "group.id",
                format!("{service}-follower-{}", crate::ids::RequestId::new()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", kafka.fetch_wait_max.as_millis().to_string())
            .create_with_context(crate::kafka::ConsumerLog::new("subscription follower"))
            .map_err(FollowerError::Kafka)?;
        let consumer = Arc::new(consumer);
        let partitions = {
            let consumer = consumer.clone();
            let topic = topic.to_owned();
            tokio::task::spawn_blocking(move || {
                consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(10))
                    .map(|m| m.topics().first().map(|t| t.partitions().len()).unwrap_or(0))
            })
            .await??
        };
        if partitions == 0 {
            return Err(FollowerError::NoTopic(topic.to_owned()));
        }
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition as i32, Offset::Beginning)
                .map_err(FollowerError::Kafka)?;
        }
        consumer.assign(&assignment).map_err(FollowerError::Kafka)?;
        let table = Arc::new(RwLock::new(SubscriptionTable::new()));
        let (caught_up_tx, caught_up) = watch::channel(false);
        let (read_to_tx, read_to) = watch::channel(vec![0; partitions]);
        let removed = Arc::new(RwLock::new(HashSet::new()));
        tokio::spawn(follow(
            consumer.clone(),
            crate::pacing::Pacer::new(kafka),
            codec,
            Applied {
                table: table.clone(),
                read_to: read_to_tx,
                removed: removed.clone(),
            },
            CatchUp {
                partitions,
                at_end: HashSet::new(),
                caught_up: caught_up_tx,
            },
            shutdown,
            service.to_owned(),
        ));
        Ok(Self {
            table,
            caught_up,
            consumer,
            topic: topic.to_owned(),
            read_to,
            removed,
        })
    }

    /// Whether subscription `id` exists, having read everything written to
    /// the topic before this call if the table does not know it yet (a
    /// record routed to a brand-new subscription may reach this follower
    /// before the subscription does). Deleted subscriptions answer at once;
    /// gives up after `timeout`.
    pub async fn knows(&self, id: &SubscriptionId, timeout: Duration) -> bool {
        if self.has(id) {
            return true;
        }
        if self.removed.read().contains(id) {
            return false;
        }
        let (consumer, topic, partitions) = (self.consumer.clone(), self.topic.clone(), self.read_to.borrow().len());
        let ends = tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    let partition = i32::try_from(p).unwrap_or(i32::MAX);
                    consumer
                        .fetch_watermarks(&topic, partition, timeout)
                        .map(|(_, high)| high)
                })
                .collect::<Result<Vec<i64>, KafkaError>>()
        })
        .await;
        let ends = match ends {
            Ok(Ok(ends)) => ends,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the subscription topic's end");
                return self.has(id);
            }
            Err(e) => {
                tracing::debug!(error = %e, "the end query stopped");
                return self.has(id);
            }
        };
        // The follower may be paused (idle pacing): look now.
        crate::pacing::wrote(&self.topic);
        let mut read_to = self.read_to.clone();
        let reached = |read: &Vec<i64>| read.iter().zip(&ends).all(|(read, end)| read >= end);
        if tokio::time::timeout(timeout, read_to.wait_for(reached)).await.is_err() {
            tracing::debug!(subscription = %id, "the subscription follower did not reach the topic's end in time");
        }
        self.has(id)
    }

    /// Whether the table holds `id` now.
    fn has(&self, id: &SubscriptionId) -> bool {
        self.table.read().get(id).is_some()
    }

    /// Waits until every partition was read to its end once.
    pub async fn caught_up(&self, timeout: Duration) -> Result<(), FollowerError> {
        let mut caught_up = self.caught_up.clone();
        tokio::time::timeout(timeout, caught_up.wait_for(|c| *c))
            .await
            .map_err(|_| FollowerError::CatchUpTimeout(timeout))?
            .map_err(|_| FollowerError::Stopped)?;
        Ok(())
    }
}

/// Where the follower applies what it reads.
struct Applied {
    table: Arc<RwLock<SubscriptionTable>>,
    read_to: watch::Sender<Vec<i64>>,
    removed: Arc<RwLock<HashSet<SubscriptionId>>>,
}

impl Applied {
    /// Notes that `partition` was read up to (not including) `next`.
    fn read_to(&self, partition: i32, next: i64) {
        self.read_to.send_if_modified(
            |read| match usize::try_from(partition).ok().and_then(|p| read.get_mut(p)) {
                Some(read) if *read < next => {
                    *read = next;
                    true
                }
                _ => false,
            },
        );
    }
}

async fn follow(
    consumer: Arc<StreamConsumer<crate::kafka::ConsumerLog>>,
    mut pacer: crate::pacing::Pacer,
    codec: AvroCodec,
    applied: Applied,
    mut catch_up: CatchUp,
    shutdown: CancellationToken,
    service: String,
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
                let Some(id) = message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| k.parse::<SubscriptionId>().ok())
                else {
                    tracing::warn!(offset = message.offset(), "subscription record without a valid key");
                    applied.read_to(message.partition(), message.offset() + 1);
                    continue;
                };
                match message.payload() {
                    None => {
                        applied.table.write().remove(&id);
                        applied.removed.write().insert(id);
                    }
                    Some(payload) => loop {
                        match codec.decode::<Subscription>(Contract::Subscription, payload).await {
                            Ok(subscription) => {
                                applied.removed.write().remove(&subscription.id);
                                applied.table.write().upsert(subscription);
                                break;
                            }
                            Err(e) if e.is_retriable() => {
                                tracing::warn!(error = %e, "cannot decode a subscription yet; retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, subscription = %id, "skipping an undecodable subscription record");
                                break;
                            }
                        }
                    },
                }
                applied.read_to(message.partition(), message.offset() + 1);
                metrics::gauge!("triggers_subscriptions_known", "service" => service.clone())
                    .set(applied.table.read().len() as f64);
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                pacer.saw_end();
                // At the end: the position is the partition's end (records
                // compacted away were never read).
                if let Ok(positions) = consumer.position()
                    && let Some(Offset::Offset(next)) = positions
                        .elements()
                        .iter()
                        .find(|e| e.partition() == partition)
                        .map(|e| e.offset())
                {
                    applied.read_to(partition, next);
                }
                catch_up.reached_end(partition);
            }
            Err(e) => {
                tracing::warn!(error = %e, "error following subscriptions");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Tells the waiters once every partition was read to its end.
struct CatchUp {
    partitions: usize,
    at_end: HashSet<i32>,
    caught_up: watch::Sender<bool>,
}

impl CatchUp {
    fn reached_end(&mut self, partition: i32) {
        self.at_end.insert(partition);
        if self.at_end.len() >= self.partitions {
            self.caught_up.send_replace(true);
        }
    }
}
