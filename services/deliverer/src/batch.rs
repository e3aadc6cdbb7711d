//! Open batches of batched subscriptions: deliveries wait here until the
//! batch is full (`max_events`) or its first member has waited `max_wait_ms`;
//! then the whole batch goes out as one webhook.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::oneshot;
use triggers_core::delivery::Delivery;
use triggers_core::ids::SubscriptionId;

/// A delivery waiting in a batch. `done` tells its record's handler whether
/// the batch's effects (outcome, retry or DLQ record) are in Kafka.
#[derive(Debug)]
pub struct Member {
    /// The delivery.
    pub delivery: Delivery,
    /// Its trace context.
    pub traceparent: Option<Vec<u8>>,
    /// Resolved once the member's records are produced (`false` on shutdown).
    pub done: oneshot::Sender<triggers_core::consume::Handled>,
}

#[derive(Debug)]
struct Open {
    generation: u64,
    members: Vec<Member>,
}

/// What joining a batch did.
#[derive(Debug, Default)]
pub struct Joined {
    /// The member opened a new batch: its generation, for the timer.
    pub opened: Option<u64>,
    /// The batch is full: send these.
    pub full: Option<Vec<Member>>,
}

/// The open batch of every batched subscription.
#[derive(Debug, Default)]
pub struct Batcher {
    open: Mutex<HashMap<SubscriptionId, Open>>,
    generations: AtomicU64,
}

impl Batcher {
    /// Adds `member` to `subscription`'s open batch (opening one if needed).
    pub fn join(&self, subscription: SubscriptionId, member: Member, max_events: usize) -> Joined {
        let mut open = self.open.lock();
        let mut joined = Joined::default();
        let batch = open.entry(subscription).or_insert_with(|| {
            let generation = self.generations.fetch_add(1, Ordering::Relaxed);
            joined.opened = Some(generation);
            Open {
                generation,
                members: Vec::new(),
            }
        });
        batch.members.push(member);
        if batch.members.len() >= max_events.max(1) {
            joined.full = open.remove(&subscription).map(|b| b.members);
        }
        joined
    }

    /// Takes the batch opened as `generation` if it is still open (its timer
    /// fired before it filled up).
    pub fn take(&self, subscription: SubscriptionId, generation: u64) -> Option<Vec<Member>> {
        let mut open = self.open.lock();
        if open.get(&subscription)?.generation != generation {
            return None;
        }
        open.remove(&subscription).map(|b| b.members)
    }
}

#[cfg(test)]
mod tests {
    use triggers_core::event::Event;

    use super::*;

    fn member(subscription: SubscriptionId) -> (Member, oneshot::Receiver<triggers_core::consume::Handled>) {
        let (done, receiver) = oneshot::channel();
        let event = Event::new(triggers_core::ids::TenantId::new(), "t", "s", serde_json::Value::Null);
        let member = Member {
            delivery: Delivery::first(event, subscription),
            traceparent: None,
            done,
        };
        (member, receiver)
    }

    #[test]
    fn a_batch_is_sent_when_full_and_a_timer_takes_only_its_own_batch() {
        let batcher = Batcher::default();
        let subscription = SubscriptionId::new();
        let (a, _ra) = member(subscription);
        let first = batcher.join(subscription, a, 2);
        let generation = first.opened.unwrap_or(u64::MAX);
        assert!(first.full.is_none());
        let (b, _rb) = member(subscription);
        let second = batcher.join(subscription, b, 2);
        assert!(second.opened.is_none());
        assert_eq!(second.full.map(|m| m.len()), Some(2));
        // The first batch's timer finds nothing of its own.
        let (c, _rc) = member(subscription);
        let third = batcher.join(subscription, c, 2);
        assert!(third.opened.is_some_and(|g| g != generation));
        assert!(batcher.take(subscription, generation).is_none());
        assert_eq!(
            third
                .opened
                .and_then(|g| batcher.take(subscription, g))
                .map(|m| m.len()),
            Some(1)
        );
    }
}
