//! Idle fetch pacing, for brokers that do not long-poll.
//!
//! A Kafka broker holds a fetch until data arrives or `fetch.wait.max.ms`
//! passes, so an idle consumer costs next to nothing. Tansu (the local
//! broker) instead queries its storage for every partition of the fetch and
//! then sleeps the whole wait, even when it found data; a consumer with the
//! 10 ms wait that keeps local latency low makes ~100 storage round trips a
//! second while nothing happens, and a dozen such consumers keep a core
//! busy.
//!
//! With pacing on (`kafka.idle_fetch_interval` > 0), a consumer that has
//! read nothing for `kafka.idle_after` pauses its partitions (librdkafka
//! stops fetching them) and every `idle_fetch_interval` resumes them for a
//! look that lasts until each partition's fetch came back (its
//! end-of-partition event) or 5 s passed; the first record it
//! reads puts it back to full speed. Paused partitions resume from the
//! position the application reached, so pacing loses and repeats nothing,
//! and the consumer keeps polling (rebalances and the poll interval are
//! served as usual). The price is latency for the first record after an
//! idle spell, which two things keep low:
//! - **Records this process writes wake its readers.** A producer of this
//!   process that gets a record's delivery report calls [`wrote`]; a paused
//!   consumer of the same process that reads that topic looks at once. In
//!   the local stack every service runs in one process, so an event sent
//!   over HTTP reaches router and deliverer without waiting for an
//!   interval; records from other processes wait for the next look.
//! - **A look starts at once.** librdkafka's broker thread notices resumed
//!   partitions only when it wakes up, up to a second later (~0.7 s
//!   measured on Tansu); a look's resume queues a zero-timeout offset query
//!   on the partitions' broker, which wakes it.
//!
//! So a record from another process waits up to one interval; one this
//! process wrote, a few milliseconds.
//!
//! Off by default: brokers that long-poll (MSK) need none of it.
//!
//! Whether pacing is on or off, the pacer also *holds* a consumer whose
//! work is full ([`Pacer::hold`]): its partitions stay paused, whatever the
//! idle timer says, until [`Pacer::release`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::KafkaConfig;

/// Pauses a consumer's partitions while it is idle and wakes it on a timer.
///
/// Drive it from the consume loop: [`Pacer::saw_record`] for every record,
/// [`Pacer::saw_end`] for every end-of-partition event (paced consumers ask
/// for them: [`crate::kafka::paced`]), and a `select!` branch on
/// [`Pacer::due`] that calls [`Pacer::act`].
#[derive(Debug)]
pub struct Pacer {
    settings: Option<Settings>,
    state: State,
    held: bool,
    /// Notified by [`wrote`] for the topics this consumer was assigned when
    /// it last paused.
    wake: Arc<Notify>,
}

/// The paced consumers of this process by topic they read, for [`wrote`].
static READERS: LazyLock<Mutex<HashMap<String, Vec<Weak<Notify>>>>> = LazyLock::new(Default::default);

/// Whether any consumer of this process is paced: until one is, [`wrote`]
/// costs one atomic load.
static ANY_PACED: AtomicBool = AtomicBool::new(false);

/// Notes that this process wrote a record to `topic`: a paused consumer of
/// this process that reads it looks at once. Triggers' producer calls it
/// for every record delivered.
pub fn wrote(topic: &str) {
    if !ANY_PACED.load(Ordering::Relaxed) {
        return;
    }
    if let Some(readers) = READERS.lock().get(topic) {
        for reader in readers.iter().filter_map(Weak::upgrade) {
            reader.notify_one();
        }
    }
}

/// Registers `wake` as a reader of `topic` for [`wrote`] (once).
fn listen(topic: &str, wake: &Arc<Notify>) {
    ANY_PACED.store(true, Ordering::Relaxed);
    let mut readers = READERS.lock();
    let list = readers.entry(topic.to_owned()).or_default();
    list.retain(|reader| reader.strong_count() > 0);
    if !list
        .iter()
        .any(|reader| std::ptr::eq(reader.as_ptr(), Arc::as_ptr(wake)))
    {
        list.push(Arc::downgrade(wake));
    }
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    idle_after: Duration,
    interval: Duration,
}

/// The longest a resumed consumer waits for its fetches to come back
/// before it pauses again (a broker that is down answers none).
const PROBE_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Fetching; pauses once nothing came for `idle_after` since `since`.
    Active { since: Instant },
    /// Partitions paused until `until`.
    Paused { until: Instant },
    /// Resumed at `since` to look for records; pauses again as soon as every
    /// partition's fetch came back empty (`ends` of `expected`), so a slow
    /// broker makes the look longer instead of cutting off its answer.
    Probing {
        since: Instant,
        ends: usize,
        expected: usize,
    },
    /// A record came while paused: resume at once.
    Waking,
}

impl Pacer {
    /// A pacer with `kafka`'s settings (one that never acts when
    /// `idle_fetch_interval` is zero).
    pub fn new(kafka: &KafkaConfig) -> Self {
        let settings = (!kafka.idle_fetch_interval.is_zero()).then_some(Settings {
            idle_after: kafka.idle_after,
            interval: kafka.idle_fetch_interval,
        });
        Self {
            settings,
            state: State::Active { since: Instant::now() },
            held: false,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Pauses every assigned partition until [`Pacer::release`]: the
    /// consumer's work is full. Call again when a record came while held (a
    /// partition assigned meanwhile is not paused yet).
    pub fn hold<C: ConsumerContext, K: Consumer<C>>(&mut self, consumer: &K) {
        self.held = true;
        match consumer.assignment() {
            Ok(assignment) => {
                if let Err(e) = consumer.pause(&assignment) {
                    tracing::debug!(error = %e, "cannot pause a full consumer");
                }
            }
            Err(e) => tracing::debug!(error = %e, "no assignment to hold"),
        }
    }

    /// Ends a hold: resumes the partitions, unless idle pacing has them
    /// paused (its timer resumes them).
    pub fn release<C: ConsumerContext, K: Consumer<C>>(&mut self, consumer: &K) {
        self.held = false;
        if !matches!(self.state, State::Paused { .. }) {
            resume(consumer, false);
        }
    }

    /// Whether the consumer is held ([`Pacer::hold`]).
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Whether the pacer has every partition paused (held, or idle).
    pub fn is_paused(&self) -> bool {
        self.held || matches!(self.state, State::Paused { .. })
    }

    /// Notes a record: the consumer is busy, so it stays at full speed.
    pub fn saw_record(&mut self) {
        if self.settings.is_none() {
            return;
        }
        self.state = match self.state {
            State::Paused { .. } | State::Waking => State::Waking,
            State::Active { .. } | State::Probing { .. } => State::Active { since: Instant::now() },
        };
    }

    /// Notes that a fetch reached the end of a partition.
    pub fn saw_end(&mut self) {
        if let State::Probing { ends, .. } = &mut self.state {
            *ends += 1;
        }
    }

    /// Resolves when [`Pacer::act`] is due (for a paused consumer: its next
    /// look, or a record this process wrote to one of its topics); never
    /// when pacing is off. The future borrows nothing, so the loop may use
    /// the pacer meanwhile. While held, never.
    pub fn due(&self) -> impl Future<Output = ()> + Send + 'static {
        let deadline = self.settings.filter(|_| !self.held).map(|settings| match self.state {
            State::Active { since } => since + settings.idle_after,
            State::Paused { until } => until,
            State::Probing { since, ends, expected } if ends < expected => since + PROBE_LIMIT,
            State::Probing { .. } | State::Waking => Instant::now(),
        });
        let wake = matches!(self.state, State::Paused { .. }).then(|| self.wake.clone());
        async move {
            match (deadline, wake) {
                (Some(deadline), Some(wake)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = wake.notified() => {}
                    }
                }
                (Some(deadline), None) => tokio::time::sleep_until(deadline).await,
                (None, _) => std::future::pending().await,
            }
        }
    }

    /// Pauses an idle consumer, or resumes a paused one for a look.
    pub fn act<C: ConsumerContext, K: Consumer<C>>(&mut self, consumer: &K) {
        let Some(settings) = self.settings.filter(|_| !self.held) else {
            return;
        };
        let now = Instant::now();
        if let State::Probing { since, ends, expected } = self.state {
            tracing::trace!(
                looked_ms = since.elapsed().as_millis() as u64,
                ends,
                expected,
                "look done"
            );
        }
        self.state = match self.state {
            State::Active { .. } | State::Probing { .. } => match consumer.assignment() {
                // Nothing assigned yet (a group still joining): look again later.
                Ok(assignment) if assignment.count() == 0 => State::Active { since: now },
                Ok(assignment) => match consumer.pause(&assignment) {
                    Ok(()) => {
                        tracing::trace!(partitions = assignment.count(), "idle: pausing fetches");
                        for topic in assignment.to_topic_map().keys().map(|(topic, _)| topic) {
                            listen(topic, &self.wake);
                        }
                        // A write noted while fetching is no news.
                        let _stale = self.wake.notified().now_or_never();
                        State::Paused {
                            until: now + settings.interval,
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot pause an idle consumer");
                        State::Active { since: now }
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "no assignment to pace");
                    State::Active { since: now }
                }
            },
            State::Paused { .. } => {
                let expected = resume(consumer, true);
                State::Probing {
                    since: now,
                    ends: 0,
                    expected,
                }
            }
            State::Waking => {
                resume(consumer, true);
                State::Active { since: now }
            }
        };
    }
}

/// Resumes every assigned partition; returns how many there are. For an
/// idle look, `wake` also wakes the broker thread that fetches them. A
/// release after a hold does not: it happens often under load, when the
/// broker thread is busy anyway, and each wake is a request to the broker
/// (p95 at 300 events/s rose from ~0.2 s to ~0.4 s with it).
fn resume<C: ConsumerContext, K: Consumer<C>>(consumer: &K, wake: bool) -> usize {
    match consumer.assignment() {
        Ok(assignment) => {
            if let Err(e) = consumer.resume(&assignment) {
                tracing::debug!(error = %e, "cannot resume a paced consumer");
            }
            if wake {
                wake_fetcher(consumer, &assignment);
            }
            assignment.count()
        }
        Err(e) => {
            tracing::debug!(error = %e, "no assignment to resume");
            0
        }
    }
}

/// librdkafka applies a resume at once, but the broker thread fetches the
/// partition only when it next wakes up (it sleeps up to a second while
/// nothing is fetched). Any request queued on that broker wakes it: an
/// end-offset query with a zero timeout is queued and not waited for.
fn wake_fetcher<C: ConsumerContext, K: Consumer<C>>(consumer: &K, assignment: &TopicPartitionList) {
    let Some(first) = assignment.elements().into_iter().next() else {
        return;
    };
    let mut query = TopicPartitionList::new();
    if query
        .add_partition_offset(first.topic(), first.partition(), Offset::End)
        .is_ok()
    {
        // Times out at once by design; the answer is not needed.
        let _queued = consumer.offsets_for_times(query, Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(interval_ms: u64) -> KafkaConfig {
        KafkaConfig {
            idle_fetch_interval: Duration::from_millis(interval_ms),
            idle_after: Duration::from_millis(500),
            fetch_wait_max: Duration::from_millis(10),
            ..KafkaConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn off_never_becomes_due() {
        let pacer = Pacer::new(&kafka(0));
        let due = tokio::time::timeout(Duration::from_secs(3600), pacer.due()).await;
        assert!(due.is_err(), "a pacer that is off must never be due");
    }

    #[tokio::test(start_paused = true)]
    async fn due_after_the_idle_window_and_records_push_it_back() {
        let mut pacer = Pacer::new(&kafka(250));
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(400)).await;
        pacer.saw_record();
        pacer.due().await;
        // Due 500 ms after the last record, not after the start.
        assert_eq!(start.elapsed(), Duration::from_millis(900));
    }

    #[tokio::test(start_paused = true)]
    async fn a_look_lasts_until_every_fetch_came_back() {
        let mut pacer = Pacer::new(&kafka(250));
        let since = Instant::now();
        pacer.state = State::Probing {
            since,
            ends: 0,
            expected: 2,
        };
        pacer.saw_end();
        // One partition of two answered: the look goes on (up to its limit).
        let early = tokio::time::timeout(Duration::from_secs(1), pacer.due()).await;
        assert!(early.is_err(), "paused again before every fetch came back");
        pacer.saw_end();
        pacer.due().await;
        assert_eq!(
            since.elapsed(),
            Duration::from_secs(1),
            "due at once after the last end"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_look_that_gets_no_answer_ends_at_its_limit() {
        let mut pacer = Pacer::new(&kafka(250));
        let since = Instant::now();
        pacer.state = State::Probing {
            since,
            ends: 0,
            expected: 1,
        };
        pacer.due().await;
        assert_eq!(since.elapsed(), PROBE_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_while_paused_wakes_at_once() {
        let mut pacer = Pacer::new(&kafka(250));
        let now = Instant::now();
        pacer.state = State::Paused {
            until: now + Duration::from_secs(60),
        };
        pacer.saw_record();
        pacer.due().await;
        assert_eq!(now.elapsed(), Duration::ZERO);
        assert_eq!(pacer.state, State::Waking);
    }
}
