//! The at-least-once consume loop shared by consumers whose records may be
//! worked on concurrently and in any order.
//!
//! - **Slots.** Up to `max_in_flight` records are worked on at once. A
//!   handler that only waits (an ordered delivery waiting for its turn) may
//!   [`Slot::free`] its slot: it stays in flight for its offset, but no
//!   longer holds back other records. Records that wait that way are bounded
//!   too (`max_in_flight` × [`WAITING_FACTOR`]), as are the payload bytes in
//!   memory (`max_bytes`).
//! - **Never stop polling.** Records read while every slot is busy wait in a
//!   small backlog; when it is full (or a bound above is reached) the
//!   consumer *pauses* its partitions and goes on polling, so a consumer
//!   whose handlers all sleep for minutes serves rebalances and stays within
//!   `max.poll.interval.ms` instead of being evicted from its group (which
//!   would read its records again, and again).
//! - **Offsets.** Each offset is stored only as part of its partition's
//!   contiguous done prefix.
//! - **Rebalances.** A partition taken away goes over drained
//!   ([`crate::handover`]): its waiting records stop, its running ones
//!   finish (within the grace period), its done prefix is committed, and
//!   what was read from it but not started is dropped.
//! - **Alignment.** A consumer of two topics may keep one from being read
//!   ahead of the other in record time ([`crate::align`]).
//! - **Failures.** A handler that panics is run again with backoff; after
//!   [`HANDLER_ATTEMPTS`] tries, or when it reports a record it can never
//!   process ([`Handled::Poison`]), the record goes to the quarantine topic
//!   and counts as done, so one bad record cannot freeze its partition.
//! - **Shutdown.** Stop reading, finish what is in flight (within a grace
//!   period), store, commit synchronously and leave the group, the last two
//!   on a blocking thread ([`close`]).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::align::{Align, Aligner, Side};
use crate::handover::Handover;
use crate::kafka::ConsumerLog;
use crate::pacing::Pacer;
use crate::quarantine::{Poison, Quarantine};
pub use crate::retry::{retry, retry_transient};

/// How often a panicking handler is run before its record is quarantined.
pub const HANDLER_ATTEMPTS: u32 = 4;
/// Records that freed their slot may number this many times the slots.
pub const WAITING_FACTOR: usize = 16;
/// How long [`close`] waits for the final commit and the group's leave.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(30);

/// What became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Its effect is done: its offset may be stored.
    Done,
    /// Shutdown came first: it will be read again.
    Stopped,
    /// It can never be processed: quarantine it, then count it as done.
    Poison(Poison),
}

/// The bounds of one consume loop.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Records worked on at once.
    pub max_in_flight: usize,
    /// Payload bytes read and not yet done (in flight, waiting, backlog);
    /// beyond it the consumer pauses. A single record larger than this is
    /// still taken alone.
    pub max_bytes: usize,
    /// How long shutdown waits for the records in flight.
    pub grace: Duration,
    /// Two topics read side by side in record time.
    pub align: Option<Align>,
}

impl Limits {
    /// `max_in_flight` records, 256 MiB, `grace`.
    pub fn new(max_in_flight: usize, grace: Duration) -> Self {
        Self {
            max_in_flight: max_in_flight.max(1),
            max_bytes: 256 << 20,
            grace,
            align: None,
        }
    }

    /// The same, with `align`'s two topics read side by side.
    pub fn aligned(self, align: Align) -> Self {
        Self {
            align: Some(align),
            ..self
        }
    }
}

/// A record's hold on one of the loop's slots, and the shutdown signal.
#[derive(Debug, Clone)]
pub struct Slot {
    shutdown: CancellationToken,
    freed: Arc<AtomicBool>,
    waiting: Arc<AtomicUsize>,
    wake: Arc<Notify>,
}

impl Slot {
    /// A slot of no consume loop, for a handler run on its own (tests,
    /// tools): freeing it only marks it freed.
    pub fn standalone(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            freed: Arc::new(AtomicBool::new(false)),
            waiting: Arc::new(AtomicUsize::new(0)),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Stops when this is cancelled.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Whether the record gave up its slot ([`Slot::free`]).
    pub fn is_freed(&self) -> bool {
        self.freed.load(Ordering::Acquire)
    }

    /// From now on the record only waits: another record may take its slot.
    /// It stays in flight (its offset is stored when it is done).
    pub fn free(&self) {
        if !self.freed.swap(true, Ordering::AcqRel) {
            self.waiting.fetch_add(1, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }

    /// The record works again after it waited ([`Slot::free`]): it takes a
    /// slot back, beyond `max_in_flight` if need be (the loop then starts
    /// no other record until enough are done).
    pub fn occupy(&self) {
        self.settle();
    }

    fn settle(&self) {
        if self.freed.swap(false, Ordering::AcqRel) {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A read record waiting for a slot.
struct Pending {
    message: OwnedMessage,
    bytes: usize,
}

fn size(message: &OwnedMessage) -> usize {
    message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len)
}

/// A consumer context that may share a [`Handover`] with its consume loop.
pub trait WithHandover: ConsumerContext {
    /// The handover its rebalance callback drains through, if any.
    fn handover(&self) -> Option<&Arc<Handover>> {
        None
    }
}

impl WithHandover for ConsumerLog {
    fn handover(&self) -> Option<&Arc<Handover>> {
        ConsumerLog::handover(self)
    }
}

/// Where a finished record leaves its partition: the offset to store,
/// if its done prefix moved.
pub type Finished = (String, i32, Option<i64>);

/// A record's task, ended (an error: it panicked or was aborted).
pub type Joined = Result<Finished, tokio::task::JoinError>;

/// Stores the offset a record's end moved its partition's done prefix to.
pub fn store_finished<C: ConsumerContext + 'static>(consumer: &StreamConsumer<C>, finished: Joined) {
    match finished {
        Ok((topic, partition, Some(watermark))) => {
            if let Err(e) = consumer.store_offset(&topic, partition, watermark) {
                tracing::debug!(error = %e, topic, partition, "cannot store offset (revoked?)");
            }
        }
        Ok((_, _, None)) => {}
        Err(e) => tracing::error!(error = %e, "a record's work ended abnormally; it will be read again"),
    }
}

/// Runs `handle` on every record until `shutdown`, with `pacer` pausing the
/// consumer while it is idle or full. `handle` gets the record and its
/// [`Slot`]; poison records go to `quarantine`. Partitions revoked go over
/// drained through the consumer's [`Handover`] (one of its own when its
/// context has none: then nothing is drained).
pub async fn run<C, F, Fut>(
    consumer: StreamConsumer<C>,
    mut pacer: Pacer,
    limits: Limits,
    quarantine: Quarantine,
    shutdown: CancellationToken,
    handle: F,
) where
    C: WithHandover + 'static,
    F: Fn(OwnedMessage, Slot) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let handle = Arc::new(handle);
    let quarantine = Arc::new(quarantine);
    let waiting = Arc::new(AtomicUsize::new(0));
    let wake = Arc::new(Notify::new());
    let max = limits.max_in_flight;
    let max_total = max.saturating_mul(WAITING_FACTOR + 1);
    let owned = Arc::new(consumer);
    let consumer: &StreamConsumer<C> = &owned;
    let handover = consumer.context().handover().cloned().unwrap_or_else(Handover::new);
    handover.set_limit(limits.grace);
    let mut aligner = limits
        .align
        .clone()
        .map(|align| Aligner::new(align, tokio::time::Instant::now()));
    let mut in_flight = FuturesUnordered::new();
    let mut backlog: VecDeque<Pending> = VecDeque::new();
    let mut bytes = 0usize;
    loop {
        // Drop what was read from partitions taken away and not started.
        let revoked = handover.take_revoked();
        if !revoked.is_empty() {
            backlog.retain(|pending| {
                let (topic, partition) = (pending.message.topic(), pending.message.partition());
                let kept = !revoked.iter().any(|(t, p)| t == topic && *p == partition);
                if !kept {
                    bytes = bytes.saturating_sub(pending.bytes);
                }
                kept
            });
            if let Some(aligner) = &mut aligner {
                for (topic, partition) in &revoked {
                    aligner.revoked(topic, *partition);
                }
            }
        }
        // Start what the slots allow, oldest first.
        while in_flight.len().saturating_sub(waiting.load(Ordering::Acquire)) < max
            && in_flight.len() < max_total
            && let Some(next) = backlog.pop_front()
        {
            let (topic, partition) = (next.message.topic(), next.message.partition());
            let slot = Slot {
                shutdown: handover.started(topic, partition, &shutdown),
                freed: Arc::new(AtomicBool::new(false)),
                waiting: waiting.clone(),
                wake: wake.clone(),
            };
            // Started here, in read order (handlers may take turns as they start).
            let span = crate::kafka::trace_headers::process_span(&next.message, quarantine.service());
            let first = AbortOnDrop::spawn(handle(next.message.clone(), slot.clone()).instrument(span.clone()));
            // Its own task: it goes on (and the handover sees it end) while
            // this loop waits in a rebalance callback.
            let record_bytes = next.bytes;
            let task = AbortOnDrop::spawn(work(
                first,
                next,
                slot,
                handle.clone(),
                quarantine.clone(),
                span,
                handover.clone(),
            ));
            in_flight.push(async move { (task.await, record_bytes) });
        }
        // Pause while the backlog or memory is full; resume once half of it drained.
        let full = backlog.len() >= max || in_flight.len() >= max_total || bytes >= limits.max_bytes;
        if full && !pacer.is_held() {
            pacer.hold(consumer);
        } else if pacer.is_held() && !full && backlog.len() <= max / 2 && bytes <= limits.max_bytes / 2 {
            pacer.release(consumer);
            // The release resumed every partition: those waiting go on waiting.
            pause_waiting(consumer, aligner.as_ref());
        }
        let align_due = aligner.as_ref().and_then(Aligner::next_due);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some((finished, done_bytes)) = in_flight.next(), if !in_flight.is_empty() => {
                bytes = bytes.saturating_sub(done_bytes);
                store_finished(consumer, finished);
            }
            // A slot was freed: start what waits for one.
            () = wake.notified() => {}
            () = pacer.due() => {
                pacer.act(consumer);
                if !pacer.is_paused() {
                    pause_waiting(consumer, aligner.as_ref());
                }
            }
            () = sleep_until(align_due), if align_due.is_some() => {
                if let Some(aligner) = &mut aligner {
                    resume_ready(consumer, aligner, &pacer, quarantine.service());
                }
            }
            // Always polled, even when full (the partitions are paused then):
            // polling keeps the consumer in its group.
            message = consumer.recv() => {
                let message = match message {
                    Ok(message) => {
                        pacer.saw_record();
                        message.detach()
                    }
                    Err(e) if crate::kafka::is_partition_eof(&e) => {
                        pacer.saw_end();
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "error reading records");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                handover.read(message.topic(), message.partition(), message.offset());
                if let Some(aligner) = &mut aligner {
                    let now = tokio::time::Instant::now();
                    let at = message.timestamp().to_millis();
                    if let Some(side) = aligner.saw(message.topic(), message.partition(), at, now) {
                        pause(consumer, aligner, side);
                    }
                    resume_ready(consumer, aligner, &pacer, quarantine.service());
                }
                let record_bytes = size(&message);
                bytes += record_bytes;
                backlog.push_back(Pending { message, bytes: record_bytes });
                if pacer.is_held() {
                    // Read although paused (a partition assigned meanwhile): pause it too.
                    pacer.hold(consumer);
                }
            }
        }
    }
    let drain = async {
        while let Some((finished, _)) = in_flight.next().await {
            store_finished(consumer, finished);
        }
    };
    if tokio::time::timeout(limits.grace, drain).await.is_err() {
        tracing::warn!("stopped with records in flight; they will be read again");
    }
    // What is left was given up: the revoke of closing waits for nothing.
    handover.set_limit(Duration::ZERO);
    close(owned, CLOSE_LIMIT).await;
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn partition_list(topic: &str, partition: i32) -> rdkafka::TopicPartitionList {
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// Pauses a partition that runs ahead of the other topic.
fn pause<C: ConsumerContext + 'static>(consumer: &StreamConsumer<C>, aligner: &Aligner, (index, partition): Side) {
    let topic = aligner.topic(index);
    if let Err(e) = consumer.pause(&partition_list(topic, partition)) {
        tracing::debug!(error = %e, topic, partition, "cannot pause a partition ahead of the other topic (revoked?)");
    }
}

/// Pauses again the partitions waiting for the other topic (after
/// something resumed every partition).
fn pause_waiting<C: ConsumerContext + 'static>(consumer: &StreamConsumer<C>, aligner: Option<&Aligner>) {
    if let Some(aligner) = aligner {
        for side in aligner.waiting() {
            pause(consumer, aligner, side);
        }
    }
}

/// Resumes the partitions whose wait is over, unless the pacer has every
/// partition paused (its resume covers them).
fn resume_ready<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    aligner: &mut Aligner,
    pacer: &Pacer,
    service: &'static str,
) {
    for ((index, partition), ended) in aligner.ready(tokio::time::Instant::now()) {
        let topic = aligner.topic(index);
        metrics::counter!(
            "triggers_consumer_align_waits_total",
            "service" => service,
            "topic" => topic.to_owned(),
            "ended" => ended.as_str()
        )
        .increment(1);
        if pacer.is_paused() {
            continue;
        }
        if let Err(e) = consumer.resume(&partition_list(topic, partition)) {
            tracing::debug!(error = %e, topic, partition, "cannot resume a partition that waited for the other topic");
        }
    }
}

/// One record's work: the handler (again, with backoff, if it panicked),
/// then quarantine if it is poison. Resolves with its partition and the
/// offset to store, if its end moved the partition's done prefix.
async fn work<F, Fut>(
    first: AbortOnDrop<Handled>,
    pending: Pending,
    slot: Slot,
    handle: Arc<F>,
    quarantine: Arc<Quarantine>,
    span: tracing::Span,
    handover: Arc<Handover>,
) -> Finished
where
    F: Fn(OwnedMessage, Slot) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let Pending { message, .. } = pending;
    let (topic, partition, offset) = (message.topic().to_owned(), message.partition(), message.offset());
    let shutdown = slot.shutdown.clone();
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 1;
    let mut task = first;
    let handled = loop {
        match (&mut task.0).await {
            Ok(handled) => break handled,
            Err(e) if attempt < HANDLER_ATTEMPTS => {
                metrics::counter!("triggers_handler_failures_total", "service" => quarantine.service()).increment(1);
                tracing::error!(error = %e, topic, partition, offset, attempt, "a record's handler failed; trying again");
                tokio::select! {
                    _ = shutdown.cancelled() => break Handled::Stopped,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff *= 4;
                attempt += 1;
                task = AbortOnDrop(tokio::spawn(
                    handle(message.clone(), slot.clone()).instrument(span.clone()),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, topic, partition, offset, attempt, "a record's handler failed every time");
                break Handled::Poison(Poison::new("handler_failed", e.to_string()));
            }
        }
    };
    slot.settle();
    let result = match &handled {
        Handled::Done => "done",
        Handled::Stopped => "stopped",
        Handled::Poison(_) => "quarantined",
    };
    metrics::counter!("triggers_records_handled_total", "service" => quarantine.service(), "result" => result)
        .increment(1);
    let done = match handled {
        Handled::Done => true,
        Handled::Stopped => false,
        Handled::Poison(poison) => quarantine.put(&message, &poison, &shutdown).await,
    };
    let watermark = handover.finished(&topic, partition, offset, done);
    (topic, partition, watermark)
}

/// Commits the stored offsets before the consumer goes. Nothing stored since
/// the last commit (an idle consumer) is not a failure.
pub fn final_commit<C: ConsumerContext + 'static>(consumer: &StreamConsumer<C>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {
            tracing::debug!("no offsets to commit at shutdown");
        }
        Err(e) => tracing::warn!(
            error = %e,
            "final offset commit failed; records done since the last commit will be read again"
        ),
    }
}

/// Commits the stored offsets and closes `consumer` (it leaves its group)
/// on a blocking thread, waiting for at most `limit`. Both block until the
/// group's coordinator answers (librdkafka's close polls until it is done,
/// with no limit of its own): on a runtime worker, a broker slow to answer
/// would stall every task of that worker, the rest of the shutdown with
/// them. Past `limit` the close goes on in the background and shutdown
/// goes on without it; the broker then notices the member is gone after
/// its session timeout. A consumer still shared elsewhere closes when its
/// last holder drops it.
pub async fn close<C: ConsumerContext + 'static>(consumer: Arc<StreamConsumer<C>>, limit: Duration) {
    let closing = tokio::task::spawn_blocking(move || {
        final_commit(&consumer);
        drop(consumer);
    });
    match tokio::time::timeout(limit, closing).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "closing the consumer failed"),
        Err(_) => tracing::warn!(
            limit_s = limit.as_secs(),
            "the consumer did not close in time; shutdown goes on without it"
        ),
    }
}

/// A spawned task that is aborted when dropped (after the shutdown grace
/// period), like the future it replaces would have been.
#[derive(Debug)]
pub struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> AbortOnDrop<T> {
    /// Runs `work` as its own task.
    pub fn spawn(work: impl Future<Output = T> + Send + 'static) -> Self {
        Self(tokio::spawn(work))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}
