//! The at-least-once consume loop shared by consumers whose records may be
//! worked on concurrently and in any order: up to `max_in_flight` records at
//! once, each offset stored only as part of its partition's contiguous done
//! prefix, and on shutdown: stop reading, finish what is in flight (within a
//! grace period), store, commit synchronously.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use tokio_util::sync::CancellationToken;

use crate::offsets::OffsetTracker;
use crate::pacing::Pacer;

/// Runs `handle` on every record until `shutdown`, with `pacer` pausing the
/// consumer while it is idle; `handle` gets the record and the shutdown
/// token. It resolves `true` when the record's effect is
/// done (its offset may be stored), `false` when it gave up because of
/// shutdown (it will be read again).
pub async fn run<C, F, Fut>(
    consumer: &StreamConsumer<C>,
    mut pacer: Pacer,
    max_in_flight: usize,
    shutdown: CancellationToken,
    grace: Duration,
    handle: F,
) where
    C: ConsumerContext + 'static,
    F: Fn(OwnedMessage, CancellationToken) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let mut tracker = OffsetTracker::new();
    let mut in_flight = FuturesUnordered::new();
    let store = |tracker: &mut OffsetTracker, (topic, partition, offset, done): (String, i32, i64, bool)| {
        if !done {
            return;
        }
        if let Some(watermark) = tracker.complete(&topic, partition, offset)
            && let Err(e) = consumer.store_offset(&topic, partition, watermark)
        {
            tracing::debug!(error = %e, topic, partition, "cannot store offset (revoked?)");
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(result) = in_flight.next(), if !in_flight.is_empty() => store(&mut tracker, result),
            () = pacer.due() => pacer.act(consumer),
            message = consumer.recv(), if in_flight.len() < max_in_flight => {
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
                let (topic, partition, offset) = (message.topic().to_owned(), message.partition(), message.offset());
                tracker.start(&topic, partition, offset);
                // Each record is its own task, so the work spreads over the
                // runtime's threads instead of this loop's one.
                let mut work = AbortOnDrop(tokio::spawn(handle(message, shutdown.clone())));
                in_flight.push(async move {
                    let done = (&mut work.0).await.unwrap_or_else(|e| {
                        tracing::error!(error = %e, topic, partition, offset, "a record's handler failed");
                        false
                    });
                    (topic, partition, offset, done)
                });
            }
        }
    }
    let drain = async {
        while let Some(result) = in_flight.next().await {
            store(&mut tracker, result);
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!("stopped with records in flight; they will be read again");
    }
    final_commit(consumer);
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

/// A spawned handler that is aborted when dropped (after the shutdown grace
/// period), like the future it replaces would have been.
struct AbortOnDrop(tokio::task::JoinHandle<bool>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Retries `attempt` with backoff until it succeeds or `shutdown`; `None`
/// on shutdown.
pub async fn retry<T, E: std::fmt::Display, Fut: Future<Output = Result<T, E>>>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> Fut,
) -> Option<T> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => {
                tracing::warn!(error = %e, what, "failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
