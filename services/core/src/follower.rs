//! Follows the compacted topic `<ns>.subscriptions` into a
//! [`SubscriptionTable`]: from the beginning, every partition, no consumer
//! group (every router instance needs the whole table), and on forever. It
//! is caught up once every partition has reached its end at least once.
//!
//! **Freshness.** Records of other topics reach a reader on their own
//! schedule, so an event accepted right after the `201` of a new
//! subscription can reach the router before the subscription does.
//! [`Follower::fresh_at`] closes that gap: it waits until the table holds
//! everything written to the topic before a given time. A background task
//! answers such demands in rounds: it notes the time, asks the broker for
//! every partition's end (one `ListOffsets` request), and once the table was
//! read to those ends, the table is fresh as of the noted time. Rounds run
//! at most every [`Follower::space_rounds`] (default
//! [`DEFAULT_ROUND_INTERVAL`]), while callers wait and for a second
//! after the last caller asked: one round serves every caller asking about
//! a time before its start, so a busy router mostly finds the table fresh
//! already (its events took longer to reach it than a round takes), asking
//! the broker a few dozen times a second, and an idle one asks not at all.
//!
//! The times compare the writer's clock (the record timestamp the gateway's
//! producer set) with this process's; clocks kept in sync (Amazon Time Sync
//! on EKS: well under a millisecond) keep the guarantee.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::codec::{AvroCodec, Contract};
use crate::config::KafkaConfig;
use crate::ids::SubscriptionId;
use crate::subscription::Subscription;
use crate::subscription_table::SubscriptionTable;

/// The least time between two questions for the topic's end, unless set
/// otherwise ([`Follower::space_rounds`]).
pub const DEFAULT_ROUND_INTERVAL: Duration = Duration::from_millis(10);

/// How long rounds go on after the last caller (ms): a busy router finds
/// the table fresh without waiting for a round of its own.
const LINGER_MS: i64 = 1_000;

/// How long a round waits for a paused follower before waking it again.
const REWAKE: Duration = Duration::from_millis(250);

/// How long one question for the topic's end may take.
const END_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The broker's answer had no end for a partition.
    #[error("no end offset for partition {partition} of {topic}: {offset:?}")]
    NoEnd {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// What came back instead.
        offset: Offset,
    },
}

/// The live table and whether it has caught up.
#[derive(Clone)]
pub struct Follower {
    /// The table.
    pub table: Arc<RwLock<SubscriptionTable>>,
    caught_up: watch::Receiver<bool>,
    topic: String,
    /// The next offset to apply, per partition.
    read_to: watch::Receiver<Vec<i64>>,
    /// Subscriptions whose deletion (tombstone) was applied.
    removed: Arc<RwLock<HashSet<SubscriptionId>>>,
    /// The table holds everything written to the topic before this time
    /// (ms since the Unix epoch).
    fresh: watch::Receiver<i64>,
    /// What callers need.
    demand: Arc<Demand>,
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
                crate::kafka::partition_count(consumer.client(), &topic, Duration::from_secs(10))
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
        let (fresh_tx, fresh) = watch::channel(0);
        let demand = Arc::new(Demand {
            needed: AtomicI64::new(0),
            wake: Notify::new(),
            interval_ms: AtomicU64::new(millis(DEFAULT_ROUND_INTERVAL)),
        });
        tokio::spawn(keep_fresh(
            Ends {
                consumer: consumer.clone(),
                topic: topic.to_owned(),
                partitions,
            },
            read_to.clone(),
            demand.clone(),
            fresh_tx,
            shutdown.clone(),
            service.to_owned(),
        ));
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
            topic: topic.to_owned(),
            read_to,
            removed,
            fresh,
            demand,
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
        if !self.fresh_at(crate::event::now_ms(), timeout).await {
            tracing::debug!(subscription = %id, "the subscription follower did not reach the topic's end in time");
        }
        self.has(id)
    }

    /// Sets the least time between two freshness rounds: shorter, events
    /// wait less for a round; longer, the broker is asked less often.
    pub fn space_rounds(&self, interval: Duration) {
        self.demand.interval_ms.store(millis(interval), Ordering::Relaxed);
    }

    /// Waits until the table holds every change written to the topic before
    /// `at` (ms since the Unix epoch; a time still to come counts as now).
    /// True once it does; false after `timeout` (the broker does not answer,
    /// or the follower cannot read), and the table is as it is.
    pub async fn fresh_at(&self, at: i64, timeout: Duration) -> bool {
        let at = at.min(crate::event::now_ms());
        self.demand.needed.fetch_max(at, Ordering::AcqRel);
        if *self.fresh.borrow() >= at {
            return true;
        }
        self.demand.wake.notify_one();
        let mut fresh = self.fresh.clone();
        matches!(
            tokio::time::timeout(timeout, fresh.wait_for(|fresh| *fresh >= at)).await,
            Ok(Ok(_))
        )
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

/// Asks the broker where the topic's partitions end.
struct Ends {
    consumer: Arc<StreamConsumer<crate::kafka::ConsumerLog>>,
    topic: String,
    partitions: usize,
}

impl Ends {
    /// Every partition's end (the offset the next record will take), in
    /// one `ListOffsets` request per broker.
    async fn ask(&self) -> Result<Vec<i64>, FollowerError> {
        let (consumer, topic, partitions) = (self.consumer.clone(), self.topic.clone(), self.partitions);
        tokio::task::spawn_blocking(move || {
            let mut query = TopicPartitionList::new();
            for partition in 0..partitions {
                let partition = i32::try_from(partition).unwrap_or(i32::MAX);
                // The latest offset: ListOffsets' timestamp -1.
                query.add_partition_offset(&topic, partition, Offset::End)?;
            }
            let answer = consumer.offsets_for_times(query, END_QUERY_TIMEOUT)?;
            (0..partitions)
                .map(|partition| {
                    let partition = i32::try_from(partition).unwrap_or(i32::MAX);
                    let element = answer.find_partition(&topic, partition);
                    if let Some(element) = &element {
                        element.error()?;
                    }
                    match element.map(|e| e.offset()) {
                        Some(Offset::Offset(end)) => Ok(end),
                        offset => Err(FollowerError::NoEnd {
                            topic: topic.clone(),
                            partition,
                            offset: offset.unwrap_or(Offset::Invalid),
                        }),
                    }
                })
                .collect()
        })
        .await?
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What [`Follower::fresh_at`]'s callers need.
#[derive(Debug)]
struct Demand {
    /// The latest time a caller asked the table to be fresh as of (ms since
    /// the Unix epoch, never later than when it asked).
    needed: AtomicI64,
    /// Wakes the rounds when a caller waits.
    wake: Notify,
    /// The least time between two rounds' starts (ms).
    interval_ms: AtomicU64,
}

/// Answers [`Follower::fresh_at`]'s demands in rounds (see the module
/// documentation).
async fn keep_fresh(
    ends: Ends,
    mut read_to: watch::Receiver<Vec<i64>>,
    demand: Arc<Demand>,
    fresh: watch::Sender<i64>,
    shutdown: CancellationToken,
    service: String,
) {
    // Registered once: a round runs up to a hundred times a second, and a
    // lookup by name and label costs a clone, a hash and a lock each time.
    let round_seconds = metrics::histogram!("triggers_subscription_freshness_round_seconds", "service" => service);
    loop {
        let needed = demand.needed.load(Ordering::Acquire);
        let waited_for = needed > *fresh.borrow();
        let recently = needed >= crate::event::now_ms() - LINGER_MS;
        if !waited_for && !recently {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = demand.wake.notified() => continue,
            }
        }
        let began = tokio::time::Instant::now();
        let asked_at = crate::event::now_ms();
        let pause = match ends.ask().await {
            Ok(end) => {
                let reached = |read: &Vec<i64>| read.iter().zip(&end).all(|(read, end)| read >= end);
                // The follower may be paused (idle pacing): it looks at
                // once when woken, and again should a look end too early.
                while !reached(&read_to.borrow()) {
                    crate::pacing::wrote(&ends.topic);
                    let read = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        read = tokio::time::timeout(REWAKE, read_to.wait_for(reached)) => read,
                    };
                    if let Ok(Err(_)) = read {
                        return;
                    }
                }
                fresh.send_if_modified(|fresh| {
                    let later = *fresh < asked_at;
                    if later {
                        *fresh = asked_at;
                    }
                    later
                });
                round_seconds.record(began.elapsed().as_secs_f64());
                Duration::from_millis(demand.interval_ms.load(Ordering::Relaxed))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read where the subscription topic ends");
                Duration::from_millis(500)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(began + pause) => {}
        }
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
