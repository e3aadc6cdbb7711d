//! Batched, coalesced writes to the event store (the `<prefix>events` and
//! `<prefix>attempts` tables, through [`eventstore`]).
//!
//! Records are gathered for up to `batch_wait` (or `max_batch` records),
//! then written together: every attempt item of the batch in
//! `BatchWriteItem`s of 25, and per event one write for its body with all its
//! outcomes of the batch (a new event's first write already carries its
//! progress), or one read-modify-write of its progress for all its outcomes.
//! Under load an event's body and its `routed` outcome usually share a batch,
//! so most events cost one item write instead of three calls.
//!
//! The writer remembers the version and progress it last wrote of recent
//! events ([`eventstore::ProgressCache`]): the next change of the same event
//! skips its read, and a body written after its stub skips the create that
//! would fail. Writes stay conditional on the version, so a stale entry only
//! costs a retry. Writes of the same event take turns across batches
//! ([`EventTurns`]): an event's body and its `routed` outcome often fall
//! into consecutive batches, and written at once they raced, one of them
//! into a failed conditional write and a read.
//!
//! A record's handler learns when its effect is in DynamoDB (then its offset
//! may be stored); a write that fails is retried until shutdown, unless
//! DynamoDB can never take it (an item over 400 KB): then its records are
//! poison, for the quarantine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use triggers_core::CancellationToken;
use triggers_core::analytics::Tally;
use triggers_core::consume::Handled;
use triggers_core::delivery::Outcome;
use triggers_core::dynamo::Tables;
use triggers_core::event::Event;
use triggers_core::eventstore;
use triggers_core::ids::{EventId, TenantId};
use triggers_core::quarantine::Poison;
use triggers_core::tenancy::StoreError;

/// One record's effect.
#[derive(Debug)]
pub enum Record {
    /// An event, with the expiry of its items.
    Event(Box<Event>, i64),
    /// An outcome, with the expiry of its items.
    Outcome(Box<Outcome>, i64),
}

#[derive(Debug)]
struct Pending {
    record: Record,
    done: oneshot::Sender<Handled>,
}

/// What became of a write that was retried until it succeeded, shutdown
/// came, or DynamoDB refused it for good.
fn handled(written: Option<Result<(), StoreError>>) -> Handled {
    match written {
        Some(Ok(())) => Handled::Done,
        None => Handled::Stopped,
        Some(Err(e)) => Handled::Poison(Poison::new("store_rejected", e.to_string())),
    }
}

/// Hands records to the batching task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<Pending>,
}

#[derive(Default)]
struct Group {
    body: Option<(Box<Event>, i64)>,
    outcomes: Vec<Outcome>,
    expires_at: i64,
    done: Vec<oneshot::Sender<Handled>>,
}

impl Writer {
    /// Starts the batching task; it ends when every `Writer` is dropped.
    pub fn start(
        dynamo: aws_sdk_dynamodb::Client,
        tables: Tables,
        tally: Tally,
        max_batch: usize,
        batch_wait: Duration,
        writes_in_flight: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let (queue, mut incoming) = mpsc::channel::<Pending>(max_batch.max(1) * 4);
        let store = Arc::new(Store {
            dynamo,
            tables,
            cache: eventstore::ProgressCache::default(),
            tally,
            turns: EventTurns::new(TURN_STRIPES),
        });
        tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(writes_in_flight.max(1)));
            while let Some(first) = incoming.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::sleep(batch_wait);
                tokio::pin!(deadline);
                while batch.len() < max_batch {
                    tokio::select! {
                        biased;
                        next = incoming.recv() => match next {
                            Some(next) => batch.push(next),
                            None => break,
                        },
                        _ = &mut deadline => break,
                    }
                }
                write_batch(&store, batch, &slots, &shutdown);
            }
        });
        Self { queue }
    }

    /// Writes `record` with the next batch; `Done` once it is in DynamoDB,
    /// `Stopped` if shutdown came first.
    pub async fn write(&self, record: Record) -> Handled {
        let (done, written) = oneshot::channel();
        if self.queue.send(Pending { record, done }).await.is_err() {
            return Handled::Stopped;
        }
        written.await.unwrap_or(Handled::Stopped)
    }
}

/// What the writes share.
struct Store {
    dynamo: aws_sdk_dynamodb::Client,
    tables: Tables,
    cache: eventstore::ProgressCache,
    tally: Tally,
    turns: EventTurns,
}

/// Stripes of [`EventTurns`]: far more than writes in flight, so unrelated
/// events seldom wait for each other.
const TURN_STRIPES: usize = 4096;

/// One event's writes one at a time: a lock per stripe of event keys. The
/// later write then finds the earlier one's version in the progress cache
/// and goes straight to its conditional update.
struct EventTurns {
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::hash::RandomState,
}

impl EventTurns {
    fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The stripe of `key`.
    fn stripe(&self, key: &(TenantId, EventId)) -> usize {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key) as usize % self.stripes.len()
    }

    /// The lock the writes of `key` take turns on.
    fn of(&self, key: &(TenantId, EventId)) -> &tokio::sync::Mutex<()> {
        &self.stripes[self.stripe(key)]
    }
}

/// The writes of a batch, one per event.
type Groups = HashMap<(TenantId, EventId), Group>;

/// A batch per event: its body (if in the batch), its outcomes in the
/// order read, the latest expiry, and who waits for it; and every outcome
/// for the attempt items, in order.
fn coalesce(batch: Vec<Pending>) -> (Groups, Vec<(Outcome, i64)>) {
    let mut groups: HashMap<(TenantId, EventId), Group> = HashMap::new();
    let mut attempts = Vec::new();
    for Pending { record, done } in batch {
        match record {
            Record::Event(event, expires_at) => {
                let group = groups.entry((event.tenant, event.id)).or_default();
                group.expires_at = group.expires_at.max(expires_at);
                group.body = Some((event, expires_at));
                group.done.push(done);
            }
            Record::Outcome(outcome, expires_at) => {
                let group = groups.entry((outcome.tenant, outcome.event_id)).or_default();
                group.expires_at = group.expires_at.max(expires_at);
                attempts.push(((*outcome).clone(), expires_at));
                group.outcomes.push(*outcome);
                group.done.push(done);
            }
        }
    }
    (groups, attempts)
}

/// Starts the writes of a batch: its attempt items at once, and every
/// event's write as a write slot frees up (no batch waits for another).
fn write_batch(
    store: &Arc<Store>,
    batch: Vec<Pending>,
    slots: &Arc<tokio::sync::Semaphore>,
    shutdown: &CancellationToken,
) {
    metrics::histogram!("triggers_persister_batch_size").record(batch.len() as f64);
    let (groups, attempts) = coalesce(batch);
    // The attempt items of the batch, shared by the groups that have outcomes.
    let attempts_written = {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            if attempts.is_empty() {
                return Handled::Done;
            }
            let written = handled(
                triggers_core::consume::retry_transient("store attempts", &shutdown, StoreError::is_retriable, || {
                    eventstore::put_attempts(&store.dynamo, &store.tables, &attempts)
                })
                .await,
            );
            if written == Handled::Done {
                for (outcome, _) in &attempts {
                    store.tally.attempted(outcome);
                }
            }
            written
        });
        async move { task.await.unwrap_or(Handled::Stopped) }.boxed().shared()
    };
    for ((tenant, id), group) in groups {
        let (store, shutdown, slots) = (store.clone(), shutdown.clone(), slots.clone());
        let attempts_written = attempts_written.clone();
        tokio::spawn(async move {
            let _turn = store.turns.of(&(tenant, id)).lock().await;
            let Ok(_slot) = slots.acquire_owned().await else { return };
            let (dynamo, tables) = (&store.dynamo, &store.tables);
            let track = eventstore::Track {
                cache: Some(&store.cache),
                tally: Some(&store.tally),
            };
            let written =
                triggers_core::consume::retry_transient("store event", &shutdown, StoreError::is_retriable, || async {
                    match &group.body {
                        Some((event, expires_at)) => {
                            eventstore::put_event_with(dynamo, tables, event, *expires_at, &group.outcomes, track).await
                        }
                        None => eventstore::apply_outcomes(
                            dynamo,
                            tables,
                            &tenant,
                            &id,
                            &group.outcomes,
                            group.expires_at,
                            track,
                        )
                        .await
                        .map(|status| status.is_some()),
                    }
                })
                .await;
            // Whether the event still exists (`false`: deleted, a tombstone).
            let alive = !matches!(written, Some(Ok(false)));
            let mut written = handled(written.map(|w| w.map(|_| ())));
            if written == Handled::Done && !group.outcomes.is_empty() {
                written = attempts_written.await;
                if written == Handled::Done && !alive {
                    written = remove_orphans(&store, &tenant, &id, &shutdown).await;
                }
            }
            for done in group.done {
                let _ = done.send(written.clone());
            }
        });
    }
}

/// Removes the attempt items and dead letters the batch wrote for an event
/// that was deleted meanwhile (late outcomes of a deleted event): a deleted
/// event leaves nothing behind but its tombstone.
async fn remove_orphans(store: &Store, tenant: &TenantId, id: &EventId, shutdown: &CancellationToken) -> Handled {
    let prefixes = [format!("{id}#"), triggers_core::deadletter::event_prefix(id)];
    for prefix in &prefixes {
        let removed =
            triggers_core::consume::retry_transient("remove orphans", shutdown, StoreError::is_retriable, || {
                eventstore::delete_prefix(&store.dynamo, &store.tables.attempts, tenant, prefix)
            })
            .await;
        match removed {
            Some(Ok(count)) => {
                metrics::counter!("triggers_persister_orphans_removed_total").increment(count as u64);
            }
            other => return handled(other.map(|r| r.map(|_| ()))),
        }
    }
    Handled::Done
}

#[cfg(test)]
mod tests {
    use triggers_core::delivery::OutcomeKind;
    use triggers_core::ids::SubscriptionId;

    use super::*;

    fn event(tenant: TenantId) -> Event {
        Event::new(tenant, "order.created", "test", serde_json::Value::Null)
    }

    fn pending(record: Record) -> (Pending, oneshot::Receiver<Handled>) {
        let (done, waiting) = oneshot::channel();
        (Pending { record, done }, waiting)
    }

    #[test]
    fn a_batch_becomes_one_write_per_event_with_its_outcomes_in_order() {
        let tenant = TenantId::new();
        let (first, second) = (event(tenant), event(tenant));
        let routed = Outcome::routing(&first, vec![SubscriptionId::new()]);
        let mut delivered = routed.clone();
        delivered.kind = OutcomeKind::Delivered;
        let batch = vec![
            pending(Record::Outcome(Box::new(routed.clone()), 200)).0,
            pending(Record::Event(Box::new(first.clone()), 100)).0,
            pending(Record::Event(Box::new(second.clone()), 100)).0,
            pending(Record::Outcome(Box::new(delivered.clone()), 150)).0,
        ];
        let (groups, attempts) = coalesce(batch);
        assert_eq!(groups.len(), 2, "one group per event");
        let group = &groups[&(tenant, first.id)];
        assert_eq!(group.body.as_ref().map(|(e, _)| e.id), Some(first.id));
        let kinds: Vec<OutcomeKind> = group.outcomes.iter().map(|o| o.kind).collect();
        assert_eq!(
            kinds,
            [OutcomeKind::Routed, OutcomeKind::Delivered],
            "in the order read"
        );
        assert_eq!(group.expires_at, 200, "the latest expiry of its records");
        assert_eq!(group.done.len(), 3, "every record of the event waits for its write");
        let alone = &groups[&(tenant, second.id)];
        assert!(alone.outcomes.is_empty());
        assert_eq!(alone.done.len(), 1);
        assert_eq!(attempts.len(), 2, "every outcome is offered as an attempt item");
    }

    #[tokio::test]
    async fn writes_of_one_event_take_turns() {
        let turns = EventTurns::new(64);
        let tenant = TenantId::new();
        let key = (tenant, EventId::new());
        let first = turns.of(&key).lock().await;
        assert!(
            turns.of(&key).try_lock().is_err(),
            "a second write of the event waits for the first"
        );
        drop(first);
        assert!(turns.of(&key).try_lock().is_ok(), "and goes once the first is done");
        // Unrelated events mostly have a stripe of their own.
        let others: std::collections::HashSet<usize> =
            (0..32).map(|_| turns.stripe(&(tenant, EventId::new()))).collect();
        assert!(
            others.len() > 12,
            "32 events spread over {} of 64 stripes",
            others.len()
        );
    }

    #[test]
    fn a_write_ends_done_stopped_or_poison() {
        assert_eq!(handled(Some(Ok(()))), Handled::Done);
        assert_eq!(handled(None), Handled::Stopped);
        let refused = StoreError::found(
            "PutItem",
            "t_events",
            triggers_core::dynamo::StoreErrorKind::TooLarge,
            "over 400 KB",
        );
        assert!(matches!(handled(Some(Err(refused))), Handled::Poison(p) if p.reason == "store_rejected"));
    }
}
