//! Partitions handed over drained in a rebalance.
//!
//! A consume loop works on many records at once, and its consumer's
//! rebalance callback runs while that work goes on. Without a handover, a
//! partition taken away mid-work is given to another consumer with its
//! finished records' offsets not yet committed and its in-flight records
//! still running here: the new owner does them again while this consumer
//! finishes them too. The [`Handover`] is what the loop and the callback
//! share so that a revoked partition goes over drained:
//!
//! 1. Records that only *wait* (a retry not yet due, an ordered delivery
//!    waiting for its turn) are stopped at once: each partition's handlers
//!    watch their own cancellation token, a child of the shutdown token.
//!    Their records are not done, and the new owner reads them again.
//! 2. Records being worked on are finished, for up to the drain limit (the
//!    loop's shutdown grace period).
//! 3. The offset of each partition's done prefix is stored and committed
//!    before the partition goes, and the loop drops the records it read
//!    from it but had not started.
//!
//! The wait blocks the consumer's callback (librdkafka serves rebalances
//! from the poll), so handlers must run on other threads: on a
//! multi-threaded Tokio runtime the wait gives its worker up
//! ([`tokio::task::block_in_place`]); elsewhere nothing is awaited and only
//! the work already done is committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio_util::sync::CancellationToken;

use crate::offsets::OffsetTracker;

type Key = (String, i32);

#[derive(Debug, Default)]
struct State {
    tracker: OffsetTracker,
    /// Handlers started and not finished, per partition.
    running: HashMap<Key, usize>,
    /// Each partition's cancellation token (handlers of a revoked
    /// partition stop waiting).
    tokens: HashMap<Key, CancellationToken>,
    /// Partitions revoked since the loop last looked.
    revoked: Vec<Key>,
}

/// What a consume loop and its consumer's rebalance callback share.
#[derive(Debug)]
pub struct Handover {
    state: Mutex<State>,
    finished: Condvar,
    any_revoked: AtomicBool,
    limit_ms: AtomicU64,
}

impl Default for Handover {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            finished: Condvar::new(),
            any_revoked: AtomicBool::new(false),
            limit_ms: AtomicU64::new(10_000),
        }
    }
}

/// The offset to store for a partition taken away: its done prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// The partition's topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The last offset of the done prefix.
    pub offset: i64,
}

impl Handover {
    /// A handover that waits up to 10 s for in-flight work (until the
    /// loop sets its own grace period).
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// How long a revoke waits for the records being worked on.
    pub fn set_limit(&self, limit: Duration) {
        self.limit_ms
            .store(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A record was read (records of a partition in offset order).
    pub fn read(&self, topic: &str, partition: i32, offset: i64) {
        self.state.lock().tracker.start(topic, partition, offset);
    }

    /// A read record's handler starts: the token its handler watches (the
    /// partition's, a child of `shutdown`).
    pub fn started(&self, topic: &str, partition: i32, shutdown: &CancellationToken) -> CancellationToken {
        let mut state = self.state.lock();
        let key = (topic.to_owned(), partition);
        *state.running.entry(key.clone()).or_default() += 1;
        state
            .tokens
            .entry(key)
            .or_insert_with(|| shutdown.child_token())
            .clone()
    }

    /// A handler finished (`done`: its record's effect is done). The offset
    /// to store when the partition's done prefix moved.
    pub fn finished(&self, topic: &str, partition: i32, offset: i64, done: bool) -> Option<i64> {
        let mut state = self.state.lock();
        let key = (topic.to_owned(), partition);
        if let Some(running) = state.running.get_mut(&key) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                state.running.remove(&key);
            }
        }
        let watermark = if done {
            state.tracker.complete(topic, partition, offset)
        } else {
            None
        };
        drop(state);
        self.finished.notify_all();
        watermark
    }

    /// Records being worked on (or read and waiting to be), all partitions.
    pub fn in_flight(&self) -> usize {
        self.state.lock().tracker.in_flight()
    }

    /// `partitions` are being taken away: stops their waiting handlers,
    /// waits (up to the limit) for the others, forgets the partitions, and
    /// returns the offsets to store.
    pub fn revoke(&self, partitions: &[(String, i32)]) -> Vec<Drained> {
        if partitions.is_empty() {
            return Vec::new();
        }
        {
            let state = self.state.lock();
            for key in partitions {
                if let Some(token) = state.tokens.get(key) {
                    token.cancel();
                }
            }
        }
        let limit = Duration::from_millis(self.limit_ms.load(Ordering::Relaxed));
        let can_wait = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let started = Instant::now();
        let wait = || {
            let mut state = self.state.lock();
            let deadline = started + limit;
            while partitions.iter().any(|key| state.running.contains_key(key)) {
                if self.finished.wait_until(&mut state, deadline).timed_out() {
                    break;
                }
            }
            state
        };
        let mut state = if can_wait && !limit.is_zero() {
            tokio::task::block_in_place(wait)
        } else {
            self.state.lock()
        };
        let unfinished: usize = partitions.iter().filter_map(|key| state.running.get(key)).sum();
        if unfinished > 0 {
            tracing::warn!(
                unfinished,
                waited_ms = started.elapsed().as_millis() as u64,
                "partitions revoked with records still being worked on; their new owner reads them again"
            );
        }
        let mut drained = Vec::new();
        for (topic, partition) in partitions {
            if let Some(offset) = state.tracker.stored(topic, *partition) {
                drained.push(Drained {
                    topic: topic.clone(),
                    partition: *partition,
                    offset,
                });
            }
            state.tracker.forget(topic, *partition);
            let key = (topic.clone(), *partition);
            state.tokens.remove(&key);
            state.revoked.push(key);
        }
        self.any_revoked.store(true, Ordering::Release);
        drained
    }

    /// Partitions revoked since the last call (the loop drops what it read
    /// from them and has not started).
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        if !self.any_revoked.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut self.state.lock().revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32) -> (String, i32) {
        ("t".to_owned(), partition)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoke_waits_for_running_work_and_stops_waiting_work() {
        let handover = Handover::new();
        let shutdown = CancellationToken::new();
        for offset in 0..3 {
            handover.read("t", 0, offset);
        }
        handover.read("t", 1, 0);
        // Offsets 0 and 1 run; 1 only waits (watches its token); 2 is read only.
        let _working = handover.started("t", 0, &shutdown);
        let waiting = handover.started("t", 0, &shutdown);
        let other = handover.started("t", 1, &shutdown);
        let finisher = {
            let handover = handover.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                handover.finished("t", 0, 0, true)
            })
        };
        let stopper = {
            let handover = handover.clone();
            tokio::spawn(async move {
                waiting.cancelled().await;
                handover.finished("t", 0, 1, false)
            })
        };
        let drained = handover.revoke(&[key(0)]);
        assert_eq!(
            drained,
            vec![Drained {
                topic: "t".to_owned(),
                partition: 0,
                offset: 0
            }],
            "the revoke returns the done prefix, after the running record finished"
        );
        assert_eq!(finisher.await.ok(), Some(Some(0)));
        assert_eq!(stopper.await.ok(), Some(None), "a stopped record is not done");
        assert!(!other.is_cancelled(), "partitions kept are not stopped");
        assert!(!shutdown.is_cancelled());
        assert_eq!(handover.take_revoked(), vec![key(0)]);
        assert_eq!(handover.take_revoked(), Vec::<(String, i32)>::new());
        // The revoked partition is forgotten; the kept one still counts.
        assert_eq!(handover.in_flight(), 1);
        assert_eq!(handover.finished("t", 1, 0, true), Some(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoke_gives_up_waiting_after_the_limit() {
        let handover = Handover::new();
        handover.set_limit(Duration::from_millis(200));
        let shutdown = CancellationToken::new();
        handover.read("t", 0, 7);
        let _stuck = handover.started("t", 0, &shutdown);
        let drained = handover.revoke(&[key(0)]);
        assert!(drained.is_empty(), "nothing of the partition was done: {drained:?}");
        // The stuck record's late end stores nothing: the partition is gone.
        assert_eq!(handover.finished("t", 0, 7, true), None);
    }
}
