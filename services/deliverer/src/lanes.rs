//! Per-subscription flow control: FIFO lanes for ordered subscriptions, and
//! a cap on the attempts in flight per subscription for the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use triggers_core::ids::SubscriptionId;

/// FIFO lanes: deliveries of an ordered subscription take turns in the order
/// they were read (which is the partition's order: deliveries are keyed by
/// subscription). A turn is taken synchronously when the record is read, so
/// the order cannot depend on task scheduling.
#[derive(Debug, Default)]
pub struct Lanes {
    tails: Mutex<HashMap<SubscriptionId, oneshot::Receiver<()>>>,
}

/// One delivery's place in its lane. Its turn comes when every earlier turn
/// of the lane has been dropped.
#[derive(Debug)]
pub struct Turn {
    previous: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Lanes {
    /// Queues a turn at the end of `subscription`'s lane.
    pub fn enqueue(&self, subscription: SubscriptionId) -> Turn {
        let (done, next) = oneshot::channel();
        let previous = self.tails.lock().insert(subscription, next);
        Turn { previous, _done: done }
    }
}

impl Turn {
    /// Waits until every earlier turn of the lane is over.
    pub async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            // An error means the earlier turn was dropped: it is over too.
            let _ = previous.await;
        }
    }
}

/// At most `limit` attempts in flight per subscription, so one slow endpoint
/// holds at most that many of the consumer's slots.
#[derive(Debug)]
pub struct Slots {
    limit: usize,
    semaphores: Mutex<HashMap<SubscriptionId, Arc<Semaphore>>>,
}

impl Slots {
    /// `limit` per subscription.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            semaphores: Mutex::new(HashMap::new()),
        }
    }

    fn semaphore(&self, subscription: SubscriptionId) -> Arc<Semaphore> {
        self.semaphores
            .lock()
            .entry(subscription)
            .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
            .clone()
    }

    /// A slot, waiting at most `patience` for one (`None`: as long as it
    /// takes); `None` if none came in time.
    pub async fn acquire_within(
        &self,
        subscription: SubscriptionId,
        patience: Option<Duration>,
    ) -> Option<OwnedSemaphorePermit> {
        let acquire = self.semaphore(subscription).acquire_owned();
        match patience {
            Some(patience) => tokio::time::timeout(patience, acquire).await.ok()?.ok(),
            None => acquire.await.ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_come_in_the_order_they_were_taken() {
        let lanes = Arc::new(Lanes::default());
        let subscription = SubscriptionId::new();
        let other = SubscriptionId::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Taken in order 0..5, run in reverse: earlier ones sleep longer.
        for i in 0..5u64 {
            let mut turn = lanes.enqueue(subscription);
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50 - i * 10)).await;
                turn.wait().await;
                order.lock().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
        }
        // Another lane does not wait for this one.
        let mut free = lanes.enqueue(other);
        tokio::time::timeout(Duration::from_millis(10), free.wait())
            .await
            .unwrap_or_else(|_| panic!("an unrelated lane waited"));
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn slots_are_capped_per_subscription() {
        let slots = Slots::new(2);
        let (a, b) = (SubscriptionId::new(), SubscriptionId::new());
        let now = Some(Duration::ZERO);
        let first = slots.acquire_within(a, now).await;
        let second = slots.acquire_within(a, now).await;
        assert!(first.is_some() && second.is_some());
        let waited = slots.acquire_within(a, Some(Duration::from_millis(20))).await;
        assert!(waited.is_none(), "a third slot for the same subscription");
        assert!(
            slots.acquire_within(b, now).await.is_some(),
            "another subscription is not held up"
        );
        drop(first);
        assert!(slots.acquire_within(a, now).await.is_some(), "a freed slot is reusable");
    }
}
