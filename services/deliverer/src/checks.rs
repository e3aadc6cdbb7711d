//! Acknowledgement checks, many at once.
//!
//! A delivery that is not a fresh first attempt (a retry, a redrive, or any
//! delivery of an event more than a few seconds old) is checked first: was
//! its event acknowledged from the inbox, or deleted? One `GetItem` each
//! made a deliverer working through a backlog read DynamoDB once per event,
//! and paid a client call (signing, HTTP, JSON) for each. Here the checks
//! of concurrent deliveries are gathered for up to [`WINDOW`] (at most
//! [`BATCH_GET_KEYS`] events) and asked in one `BatchGetItem`: a backlog's
//! checks cost a call per hundred deliveries, a lone retry waits
//! [`WINDOW`] more. The read units are the same.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use triggers_core::dynamo::{StoreError, StoreErrorKind, Tables};
use triggers_core::eventstore::{self, BATCH_GET_KEYS};
use triggers_core::gather;
use triggers_core::ids::{EventId, TenantId};

/// How long a check waits for others to share its call.
pub(crate) const WINDOW: Duration = Duration::from_millis(2);

/// Calls in flight at once; checks made meanwhile wait for the next.
const CALLS_IN_FLIGHT: usize = 8;

type Key = (TenantId, EventId);

struct Check {
    key: Key,
    answer: oneshot::Sender<Result<bool, StoreError>>,
}

/// Hands checks to the gathering task, which ends when the last handle is
/// dropped (after answering what it took).
#[derive(Debug, Clone)]
pub(crate) struct Checks {
    queue: mpsc::Sender<Check>,
    table: String,
}

impl Checks {
    /// Starts the gathering task.
    pub(crate) fn start(dynamo: aws_sdk_dynamodb::Client, tables: Tables) -> Self {
        let (queue, incoming) = mpsc::channel(BATCH_GET_KEYS * CALLS_IN_FLIGHT);
        let table = tables.events.clone();
        tokio::spawn(gather(incoming, dynamo, Arc::new(tables)));
        Self { queue, table }
    }

    /// Whether the deliveries of `tenant`'s event `id` must stop.
    pub(crate) async fn stopped(&self, tenant: TenantId, id: EventId) -> Result<bool, StoreError> {
        let (answer, answered) = oneshot::channel();
        let gone = || {
            StoreError::found(
                "BatchGetItem",
                &self.table,
                StoreErrorKind::Service,
                "the acknowledgement checks stopped",
            )
        };
        self.queue
            .send(Check {
                key: (tenant, id),
                answer,
            })
            .await
            .map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

/// Takes checks in groups (the first, and whatever comes within [`WINDOW`],
/// up to [`BATCH_GET_KEYS`]) and asks DynamoDB once per group.
async fn gather(mut incoming: mpsc::Receiver<Check>, dynamo: aws_sdk_dynamodb::Client, tables: Arc<Tables>) {
    let calls = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    while let Some(first) = incoming.recv().await {
        let group = gather::group(&mut incoming, first, WINDOW, BATCH_GET_KEYS).await;
        // The semaphore is never closed.
        let Ok(call) = calls.clone().acquire_owned().await else {
            break;
        };
        let (dynamo, tables) = (dynamo.clone(), tables.clone());
        tokio::spawn(async move {
            let keys: Vec<Key> = group.iter().map(|check| check.key).collect();
            let answer = eventstore::deliveries_stopped_many(&dynamo, &tables, &keys).await;
            drop(call);
            for check in group {
                // A check whose delivery was abandoned (shutdown) is not waited for.
                let _ = check.answer.send(
                    answer
                        .as_ref()
                        .map(|stopped| stopped.contains(&check.key))
                        .map_err(Clone::clone),
                );
            }
        });
    }
}
