//! The durable event store in DynamoDB: every event with its payload, its
//! progress (per-subscription delivery states), its overall status, and every
//! delivery attempt.
//!
//! Items of the events table, all under `pk` = tenant:
//! - `e#<event id>`: the event and its progress. It is in the `inbox` index
//!   (`inbox_pk` = tenant) while not delivered or acknowledged, and in the
//!   `status` index under `<tenant>#<status>`.
//! - `c#<event id>#<n>`: chunks of a payload too large for one item (a
//!   DynamoDB item holds at most 400 KB): a payload larger than what the
//!   item's other attributes leave (less a reserve for its progress) is
//!   deflated, and if still too large, split into 300 KB chunks written
//!   before the item. An event whose other attributes alone do not fit (a
//!   Kafka-native producer's, with huge extensions) is refused as permanent
//!   ([`StoreError::is_retriable`]).
//!
//! Attempts live in the attempts table under `pk` = tenant, `sk` =
//! `<event id>#<subscription id>#<attempt>#<kind>`; dead letters beside them
//! ([`crate::deadletter`]).
//!
//! Writes are idempotent: the event body is an upsert that never touches its
//! progress; progress changes are read-modify-write under a version
//! condition, and only move states forward ([`Progress::apply`]).

mod item;
mod progress;
mod query;
mod write;

use crate::event::Event;
use crate::status::{EventStatus, Progress};

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The event (its `data` is `null` when it was not loaded).
    pub event: Event,
    /// Whether the body has been stored (an outcome can arrive first).
    pub has_body: bool,
    /// Per-subscription progress.
    pub progress: Progress,
    /// The overall status.
    pub status: EventStatus,
    /// Last change (ms since the epoch).
    pub updated_at: i64,
    /// Whether `data` was left out (a payload too large for a listing).
    pub data_omitted: bool,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The subscription.
    pub subscription_id: String,
    /// The attempt number.
    pub attempt: i32,
    /// What happened (`delivered`, `retrying`, `dead_lettered`, …).
    pub kind: String,
    /// When (ms since the epoch).
    pub at: i64,
    /// The endpoint's status.
    pub http_status: Option<i32>,
    /// How long it took.
    pub latency_ms: Option<i64>,
    /// What went wrong.
    pub error: Option<String>,
    /// The start of the answer.
    pub response_excerpt: Option<String>,
    /// For `retrying`: when the next attempt is due (ms since the epoch).
    pub next_attempt_at: Option<i64>,
}

/// Seconds since the epoch when items of an event received at `received_at`
/// expire.
pub fn expiry(received_at: i64, retention: std::time::Duration) -> i64 {
    received_at / 1000 + i64::try_from(retention.as_secs()).unwrap_or(i64::MAX / 2)
}

pub use crate::dynamo::ListError;
pub use item::{ITEM_LIMIT, LISTING_DATA_MAX};
pub use progress::{ProgressCache, Track};
pub use query::{
    BATCH_GET_KEYS, LISTING_PAGE_BYTES, ListQuery, attempts, deliveries_stopped, deliveries_stopped_many, get, list,
};
pub use write::{
    BATCHED_ITEM_MAX, NewItem, acknowledge, apply_outcome, apply_outcomes, create_events, delete, delete_prefix,
    new_item, put_attempts, put_event, put_event_with, put_existing_event,
};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn items_expire_their_retention_after_the_event_arrived() {
        let received_at = 1_700_000_000_123;
        assert_eq!(expiry(received_at, Duration::from_secs(86_400)), 1_700_000_000 + 86_400);
        assert_eq!(expiry(received_at, Duration::ZERO), 1_700_000_000);
        // A retention too long for seconds in an i64 does not wrap around.
        assert!(expiry(received_at, Duration::from_secs(u64::MAX)) > received_at / 1000);
    }
}
