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

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use base64::Engine;

use crate::analytics::Tally;
use crate::delivery::{Outcome, OutcomeKind};
use crate::dynamo::{StoreError, StoreErrorKind};
use crate::dynamo::{TTL_ATTRIBUTE, Tables, get_n, get_s, n, s, store_error};
use crate::event::{Event, now_ms};
use crate::ids::{EventId, TenantId};
use crate::status::{EventStatus, Progress};

/// The most a DynamoDB item may hold (names and values).
pub const ITEM_LIMIT: usize = 400 * 1024;
/// What an event item keeps free for its progress (one entry per matched
/// subscription, ~60 bytes each) and its fixed attributes.
const ITEM_RESERVE: usize = 48 * 1024;
/// Chunk size of payloads that do not fit one item even deflated.
const CHUNK_SIZE: usize = 300 * 1024;

type Item = HashMap<String, AttributeValue>;

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
    /// Whether `data` was left out (a chunked payload in a listing).
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

fn event_sk(id: &EventId) -> String {
    format!("e#{id}")
}

fn chunk_sk(id: &EventId, index: usize) -> String {
    format!("c#{id}#{index:04}")
}

fn is_conditional<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> bool {
    matches!(error, SdkError::ServiceError(e) if e.err().code() == Some("ConditionalCheckFailedException"))
}

/// How a payload is stored.
enum Payload {
    Inline(String),
    Deflated(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

fn deflate(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(text.as_bytes());
    encoder.finish().unwrap_or_default()
}

fn inflate(bytes: &[u8]) -> Option<String> {
    let mut text = String::new();
    flate2::read::DeflateDecoder::new(bytes)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// `text` stored inline if it takes at most `inline_limit` bytes, else
/// deflated, else in chunks.
fn encode_payload(text: String, inline_limit: usize) -> Payload {
    if text.len() <= inline_limit {
        return Payload::Inline(text);
    }
    let deflated = deflate(&text);
    if deflated.len() <= inline_limit {
        return Payload::Deflated(deflated);
    }
    Payload::Chunked(deflated.chunks(CHUNK_SIZE).map(<[u8]>::to_vec).collect())
}

/// The bytes an event item takes besides its payload and progress.
fn attributes_size(event: &Event, extensions: &str) -> usize {
    event.event_type.len()
        + event.source.len()
        + event.subject.as_ref().map_or(0, String::len)
        + event.partition_key.as_ref().map_or(0, String::len)
        + event.datacontenttype.len()
        + event.specversion.len()
        + extensions.len()
}

/// Seconds since the epoch when items of an event received at `received_at`
/// expire.
pub fn expiry(received_at: i64, retention: std::time::Duration) -> i64 {
    received_at / 1000 + i64::try_from(retention.as_secs()).unwrap_or(i64::MAX / 2)
}

/// Stores an event's body (idempotent; never changes its progress).
pub async fn put_event(client: &Client, tables: &Tables, event: &Event, expires_at: i64) -> Result<(), StoreError> {
    put_event_with(client, tables, event, expires_at, &[], Track::default()).await
}

/// What a writer brings to its progress changes: the versions it knows
/// (skips reads) and the analytics tally its status changes count into.
#[derive(Debug, Clone, Copy, Default)]
pub struct Track<'a> {
    /// Versions and progress this writer last wrote.
    pub cache: Option<&'a ProgressCache>,
    /// Where status transitions are counted.
    pub tally: Option<&'a Tally>,
}

/// Stores an event's body together with `outcomes` of it that arrived at the
/// same time: one write when the event is new (its first progress already
/// has them), else the body and then a monotonic progress change.
/// Idempotent. Attempt items are not written here ([`put_attempts`]).
pub async fn put_event_with(
    client: &Client,
    tables: &Tables,
    event: &Event,
    expires_at: i64,
    outcomes: &[Outcome],
    track: Track<'_>,
) -> Result<(), StoreError> {
    let Track { cache, tally } = track;
    let table = &tables.events;
    let extensions = serde_json::to_string(&event.extensions).unwrap_or_default();
    let room = ITEM_LIMIT.saturating_sub(ITEM_RESERVE);
    let attributes = attributes_size(event, &extensions);
    if attributes > room {
        return Err(StoreError::found(
            "PutItem",
            table,
            StoreErrorKind::TooLarge,
            format!(
                "the event's attributes other than data take {attributes} bytes; an event item has room for {room}"
            ),
        ));
    }
    let payload = encode_payload(event.data.to_string(), room - attributes);
    if let Payload::Chunked(chunks) = &payload {
        for (batch_index, batch) in chunks.chunks(25).enumerate() {
            let requests: Vec<WriteRequest> = batch
                .iter()
                .enumerate()
                .filter_map(|(i, bytes)| {
                    let put = PutRequest::builder()
                        .item("pk", s(event.tenant.to_string()))
                        .item("sk", s(chunk_sk(&event.id, batch_index * 25 + i)))
                        .item("bytes", AttributeValue::B(Blob::new(bytes.clone())))
                        .item(TTL_ATTRIBUTE, n(expires_at))
                        .build()
                        .ok()?;
                    Some(WriteRequest::builder().put_request(put).build())
                })
                .collect();
            batch_write(client, table, requests).await?;
        }
    }
    let mut body: Vec<(&str, AttributeValue)> = vec![
        ("event_type", s(&event.event_type)),
        ("source", s(&event.source)),
        ("time", n(event.time)),
        ("received_at", n(event.received_at)),
        ("specversion", s(&event.specversion)),
        ("datacontenttype", s(&event.datacontenttype)),
        ("extensions", s(extensions)),
        ("has_body", AttributeValue::Bool(true)),
        (TTL_ATTRIBUTE, n(expires_at)),
    ];
    if let Some(subject) = &event.subject {
        body.push(("subject", s(subject)));
    }
    if let Some(key) = &event.partition_key {
        body.push(("partition_key", s(key)));
    }
    match payload {
        Payload::Inline(text) => body.push(("data", s(text))),
        Payload::Deflated(bytes) => body.push(("data_z", AttributeValue::B(Blob::new(bytes)))),
        Payload::Chunked(chunks) => body.push(("chunks", n(chunks.len()))),
    }
    // A new item: body, and the initial progress.
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let mut sets = Vec::new();
    for (i, (name, value)) in body.iter().enumerate() {
        names.insert(format!("#b{i}"), (*name).to_owned());
        values.insert(format!(":b{i}"), value.clone());
        sets.push(format!("#b{i} = :b{i}"));
    }
    let body_only = format!("SET {}", sets.join(", "));
    let mut progress = Progress::default();
    for outcome in outcomes {
        progress.apply(outcome);
    }
    let status = progress.status();
    // A stub this writer made (an outcome came first): the create would fail.
    let known = cache.is_some_and(|c| c.get(&event.tenant, &event.id).is_some());
    let created = if known {
        false
    } else {
        let result = client
        .update_item()
        .table_name(table)
        .key("pk", s(event.tenant.to_string()))
        .key("sk", s(event_sk(&event.id)))
        .update_expression(format!(
            "{body_only}, progress = :progress, #status = :status, status_pk = :status_pk, version = :zero, updated_at = :now{}",
            if status.in_inbox() { ", inbox_pk = :inbox" } else { "" }
        ))
        .condition_expression("attribute_not_exists(version) AND attribute_not_exists(deleted)")
        .set_expression_attribute_names(Some({
            let mut names = names.clone();
            names.insert("#status".to_owned(), "status".to_owned());
            names
        }))
        .set_expression_attribute_values(Some({
            let mut values = values.clone();
            values.insert(":progress".to_owned(), s(serde_json::to_string(&progress).unwrap_or_default()));
            values.insert(":status".to_owned(), s(status.as_str()));
            values.insert(":status_pk".to_owned(), s(format!("{}#{}", event.tenant, status.as_str())));
            if status.in_inbox() {
                values.insert(":inbox".to_owned(), s(event.tenant.to_string()));
            }
            values.insert(":zero".to_owned(), n(0));
            values.insert(":now".to_owned(), n(now_ms()));
            values
        }))
        .send()
        .await;
        match result {
            Ok(_) => true,
            Err(e) if is_conditional(&e) => false,
            Err(e) => return Err(store_error("UpdateItem", table, e)),
        }
    };
    if created {
        if let Some(tally) = tally {
            tally.progressed(&event.tenant, &event.id, None, &progress);
        }
        if let Some(cache) = cache {
            cache.put(&event.tenant, &event.id, 0, progress);
        }
        return Ok(());
    }
    // The item exists (an outcome came first, or a replayed record):
    // write the body only — unless the event was deleted.
    let updated = client
        .update_item()
        .table_name(table)
        .key("pk", s(event.tenant.to_string()))
        .key("sk", s(event_sk(&event.id)))
        .update_expression(body_only)
        .condition_expression("attribute_not_exists(deleted)")
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .send()
        .await;
    match updated {
        Ok(_) => {}
        Err(e) if is_conditional(&e) => return Ok(()),
        Err(e) => return Err(store_error("UpdateItem", table, e)),
    }
    if !outcomes.is_empty() {
        apply_outcomes(client, tables, &event.tenant, &event.id, outcomes, expires_at, track).await?;
    }
    Ok(())
}

async fn batch_write(client: &Client, table: &str, mut requests: Vec<WriteRequest>) -> Result<(), StoreError> {
    let mut backoff = std::time::Duration::from_millis(20);
    while !requests.is_empty() {
        let output = client
            .batch_write_item()
            .request_items(table, requests)
            .send()
            .await
            .map_err(|e| store_error("BatchWriteItem", table, e))?;
        requests = output
            .unprocessed_items()
            .and_then(|u| u.get(table))
            .cloned()
            .unwrap_or_default();
        if !requests.is_empty() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
        }
    }
    Ok(())
}

/// What one writer last wrote of recent events' progress (version and
/// progress), so its next change of the same event can skip the read, and a
/// body written after its stub can skip the create that would fail. Only an
/// optimisation: every write stays conditional on the version, and a
/// conflict drops the entry and reads. Bounded: the least recently used
/// entries go first.
#[derive(Debug)]
pub struct ProgressCache {
    entries: moka::sync::Cache<(TenantId, EventId), (i64, Progress)>,
}

/// Entries a [`ProgressCache`] holds at most.
const PROGRESS_CACHE_SIZE: u64 = 100_000;

impl Default for ProgressCache {
    fn default() -> Self {
        Self {
            entries: moka::sync::Cache::new(PROGRESS_CACHE_SIZE),
        }
    }
}

impl ProgressCache {
    fn get(&self, tenant: &TenantId, id: &EventId) -> Option<(i64, Progress)> {
        self.entries.get(&(*tenant, *id))
    }

    fn put(&self, tenant: &TenantId, id: &EventId, version: i64, progress: Progress) {
        self.entries.insert((*tenant, *id), (version, progress));
    }

    fn forget(&self, tenant: &TenantId, id: &EventId) {
        self.entries.invalidate(&(*tenant, *id));
    }
}

/// How [`update_progress`] works.
#[derive(Clone, Copy)]
struct How<'a> {
    /// The expiry of a stub it creates.
    expires_at: i64,
    /// Change nothing unless the event's body is stored.
    must_exist: bool,
    /// Versions this writer knows, and its tally.
    track: Track<'a>,
}

/// Changes an event's progress with `change` (read-modify-write under the
/// item's version; retried on conflicts). Creates a stub when the body has
/// not arrived yet (unless `must_exist`). Returns the new status, or `None`
/// when the event does not exist and `must_exist`.
async fn update_progress(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    id: &EventId,
    how: How<'_>,
    change: impl Fn(&mut Progress) -> bool,
) -> Result<Option<EventStatus>, StoreError> {
    let How {
        expires_at,
        must_exist,
        track: Track { cache, tally },
    } = how;
    let table = &tables.events;
    let mut cached = cache.and_then(|c| c.get(tenant, id));
    for _ in 0..50 {
        let (version, mut progress) = match cached.take() {
            Some((version, progress)) => (Some(version), progress),
            None => match read_progress(client, table, tenant, id, must_exist).await? {
                Stored::Gone => return Ok(None),
                Stored::Found(version, progress) => (version, progress),
            },
        };
        // What the tally compares against (nothing when the event is new).
        let before = tally.and(version).map(|_| progress.clone());
        if !change(&mut progress) && version.is_some() {
            return Ok(Some(progress.status()));
        }
        let status = progress.status();
        let mut update = String::from(
            "SET progress = :progress, #status = :status, status_pk = :status_pk, version = :next, updated_at = :now, #ttl = if_not_exists(#ttl, :ttl)",
        );
        update.push_str(if status.in_inbox() {
            ", inbox_pk = :inbox"
        } else {
            " REMOVE inbox_pk"
        });
        let next = version.unwrap_or(-1) + 1;
        let mut request = client
            .update_item()
            .table_name(table)
            .key("pk", s(tenant.to_string()))
            .key("sk", s(event_sk(id)))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":progress", s(serde_json::to_string(&progress).unwrap_or_default()))
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":status_pk", s(format!("{tenant}#{}", status.as_str())))
            .expression_attribute_values(":next", n(next))
            .expression_attribute_values(":now", n(now_ms()))
            .expression_attribute_values(":ttl", n(expires_at));
        if status.in_inbox() {
            request = request.expression_attribute_values(":inbox", s(tenant.to_string()));
        }
        request = match version {
            Some(v) => request
                .condition_expression("version = :v")
                .expression_attribute_values(":v", n(v)),
            None => request.condition_expression("attribute_not_exists(version) AND attribute_not_exists(deleted)"),
        };
        match request.update_expression(update).send().await {
            Ok(_) => {
                if let Some(tally) = tally {
                    tally.progressed(tenant, id, before.as_ref(), &progress);
                }
                if let Some(cache) = cache {
                    cache.put(tenant, id, next, progress);
                }
                return Ok(Some(status));
            }
            Err(e) if is_conditional(&e) => {
                if let Some(cache) = cache {
                    cache.forget(tenant, id);
                }
                continue;
            }
            Err(e) => return Err(store_error("UpdateItem", table, e)),
        }
    }
    Err(StoreError::found(
        "UpdateItem",
        table,
        StoreErrorKind::Contended,
        "too many concurrent changes",
    ))
}

enum Stored {
    /// Deleted, or absent while it must exist.
    Gone,
    /// The version (none for a new item) and progress.
    Found(Option<i64>, Progress),
}

async fn read_progress(
    client: &Client,
    table: &str,
    tenant: &TenantId,
    id: &EventId,
    must_exist: bool,
) -> Result<Stored, StoreError> {
    let current = client
        .get_item()
        .table_name(table)
        .key("pk", s(tenant.to_string()))
        .key("sk", s(event_sk(id)))
        .projection_expression("progress, version, has_body, deleted")
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| store_error("GetItem", table, e))?;
    let item = current.item();
    if item.is_some_and(|i| i.contains_key("deleted")) {
        return Ok(Stored::Gone);
    }
    if must_exist && !item.is_some_and(|i| i.contains_key("has_body")) {
        return Ok(Stored::Gone);
    }
    let version = item.and_then(|i| get_n(i, "version"));
    let progress: Progress = item
        .and_then(|i| get_s(i, "progress"))
        .and_then(|p| serde_json::from_str(&p).ok())
        .unwrap_or_default();
    Ok(Stored::Found(version, progress))
}

/// The attempt item of a delivery outcome (`None` for routing outcomes).
fn attempt_item(outcome: &Outcome, expires_at: i64) -> Option<Item> {
    if matches!(outcome.kind, OutcomeKind::Routed | OutcomeKind::Unmatched) {
        return None;
    }
    let subscription = outcome.subscription_id.as_ref()?;
    let kind = serde_json::to_value(outcome.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut item = HashMap::from([
        ("pk".to_owned(), s(outcome.tenant.to_string())),
        (
            "sk".to_owned(),
            s(format!(
                "{}#{subscription}#{:05}#{kind}",
                outcome.event_id, outcome.attempt
            )),
        ),
        ("subscription_id".to_owned(), s(subscription.to_string())),
        ("attempt".to_owned(), n(outcome.attempt)),
        ("kind".to_owned(), s(kind)),
        ("at".to_owned(), n(outcome.at)),
        (TTL_ATTRIBUTE.to_owned(), n(expires_at)),
    ]);
    if let Some(status) = outcome.http_status {
        item.insert("http_status".to_owned(), n(status));
    }
    if let Some(latency) = outcome.latency_ms {
        item.insert("latency_ms".to_owned(), n(latency));
    }
    if let Some(error) = &outcome.error {
        item.insert("error".to_owned(), s(error));
    }
    if let Some(excerpt) = &outcome.response_excerpt {
        item.insert("response_excerpt".to_owned(), s(excerpt));
    }
    if let Some(due) = outcome.next_attempt_at {
        item.insert("next_attempt_at".to_owned(), n(due));
    }
    Some(item)
}

/// Writes the attempt items (and dead letters) of delivery outcomes, 25 to a
/// `BatchWriteItem`. Idempotent: an attempt's key is fixed by its event,
/// subscription, number and kind.
pub async fn put_attempts(client: &Client, tables: &Tables, outcomes: &[(Outcome, i64)]) -> Result<(), StoreError> {
    let mut requests: Vec<WriteRequest> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (outcome, expires_at) in outcomes {
        if let Some(item) = attempt_item(outcome, *expires_at) {
            // One write per key in a batch (DynamoDB refuses duplicates).
            if !seen.insert(get_s(&item, "sk").unwrap_or_default()) {
                continue;
            }
            if let Ok(put) = PutRequest::builder().set_item(Some(item)).build() {
                requests.push(WriteRequest::builder().put_request(put).build());
            }
        }
    }
    let writes = requests
        .chunks(25)
        .map(|chunk| batch_write(client, &tables.attempts, chunk.to_vec()));
    for result in futures::future::join_all(writes).await {
        result?;
    }
    for (outcome, expires_at) in outcomes {
        if outcome.kind == OutcomeKind::DeadLettered {
            crate::deadletter::put(client, tables, outcome, *expires_at).await?;
        }
    }
    Ok(())
}

/// Applies outcomes of one event to its progress in one read-modify-write.
/// Monotonic: outcomes that change nothing write nothing.
pub async fn apply_outcomes(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    event: &EventId,
    outcomes: &[Outcome],
    expires_at: i64,
    track: Track<'_>,
) -> Result<EventStatus, StoreError> {
    let status = update_progress(
        client,
        tables,
        tenant,
        event,
        How {
            expires_at,
            must_exist: false,
            track,
        },
        |p| {
            let mut changed = false;
            for outcome in outcomes {
                changed |= p.apply(outcome);
            }
            changed
        },
    )
    .await?;
    Ok(status.unwrap_or(EventStatus::Accepted))
}

/// Records an outcome: the event's progress, and for delivery outcomes the
/// attempt. Idempotent and monotonic.
pub async fn apply_outcome(
    client: &Client,
    tables: &Tables,
    outcome: &Outcome,
    expires_at: i64,
) -> Result<EventStatus, StoreError> {
    put_attempts(client, tables, &[(outcome.clone(), expires_at)]).await?;
    apply_outcomes(
        client,
        tables,
        &outcome.tenant,
        &outcome.event_id,
        std::slice::from_ref(outcome),
        expires_at,
        Track::default(),
    )
    .await
}

/// Whether an event's deliveries must stop: it was acknowledged from the
/// inbox, or deleted.
pub async fn deliveries_stopped(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    id: &EventId,
) -> Result<bool, StoreError> {
    let output = client
        .get_item()
        .table_name(&tables.events)
        .key("pk", s(tenant.to_string()))
        .key("sk", s(event_sk(id)))
        .projection_expression("progress, deleted")
        .send()
        .await
        .map_err(|e| store_error("GetItem", &tables.events, e))?;
    let Some(item) = output.item() else { return Ok(false) };
    Ok(item.contains_key("deleted")
        || get_s(item, "progress")
            .and_then(|p| serde_json::from_str::<Progress>(&p).ok())
            .is_some_and(|p| p.acknowledged))
}

/// Acknowledges an event from the inbox (counted in `tally`); `false` when
/// there is no such event.
pub async fn acknowledge(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    id: &EventId,
    tally: Option<&Tally>,
) -> Result<bool, StoreError> {
    let status = update_progress(
        client,
        tables,
        tenant,
        id,
        How {
            expires_at: 0,
            must_exist: true,
            track: Track { cache: None, tally },
        },
        |p| {
            let changed = !p.acknowledged;
            p.acknowledged = true;
            changed
        },
    )
    .await?;
    Ok(status.is_some())
}

/// Listings carry payloads stored inline up to this size ...
pub const LISTING_DATA_MAX: usize = 64 * 1024;
/// ... and up to this many payload bytes per page; the others are left out
/// (`data_omitted`) and read one by one.
pub const LISTING_PAGE_BYTES: usize = 1024 * 1024;
/// The most DynamoDB queries one listing request makes: a selective filter
/// answers a partial (even empty) page with a cursor instead of scanning a
/// tenant's whole history at once.
const LISTING_QUERIES: usize = 10;

/// How much of a payload an item gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// The whole payload (one event): inflated if deflated.
    Whole,
    /// For a listing: inline payloads up to `budget` bytes, nothing else.
    Listing { budget: usize },
}

fn from_item(item: &Item, tenant: &TenantId, load: Load) -> Option<StoredEvent> {
    let id: EventId = get_s(item, "sk")?.strip_prefix("e#")?.parse().ok()?;
    let progress: Progress = get_s(item, "progress")
        .and_then(|p| serde_json::from_str(&p).ok())
        .unwrap_or_default();
    let inline = item.get("data").and_then(|v| v.as_s().ok());
    let (data, data_omitted) = match (inline, load) {
        (Some(text), Load::Whole) => (serde_json::from_str(text).unwrap_or(serde_json::Value::Null), false),
        (Some(text), Load::Listing { budget }) if text.len() <= LISTING_DATA_MAX.min(budget) => {
            (serde_json::from_str(text).unwrap_or(serde_json::Value::Null), false)
        }
        (Some(_), Load::Listing { .. }) => (serde_json::Value::Null, true),
        (None, Load::Whole) => match item.get("data_z").and_then(|v| v.as_b().ok()) {
            Some(bytes) => {
                let text = inflate(bytes.as_ref()).unwrap_or_default();
                (serde_json::from_str(&text).unwrap_or(serde_json::Value::Null), false)
            }
            None => (serde_json::Value::Null, item.contains_key("chunks")),
        },
        (None, Load::Listing { .. }) => (
            serde_json::Value::Null,
            item.contains_key("data_z") || item.contains_key("chunks"),
        ),
    };
    let extensions: BTreeMap<String, String> = get_s(item, "extensions")
        .and_then(|e| serde_json::from_str(&e).ok())
        .unwrap_or_default();
    Some(StoredEvent {
        event: Event {
            id,
            tenant: *tenant,
            event_type: get_s(item, "event_type").unwrap_or_default(),
            source: get_s(item, "source").unwrap_or_default(),
            subject: get_s(item, "subject"),
            time: get_n(item, "time").unwrap_or_default(),
            received_at: get_n(item, "received_at").unwrap_or_default(),
            specversion: get_s(item, "specversion").unwrap_or_else(|| "1.0".to_owned()),
            datacontenttype: get_s(item, "datacontenttype").unwrap_or_default(),
            data,
            partition_key: get_s(item, "partition_key"),
            extensions,
        },
        has_body: item.contains_key("has_body"),
        status: get_s(item, "status")
            .and_then(|s| EventStatus::parse(&s))
            .unwrap_or_else(|| progress.status()),
        progress,
        updated_at: get_n(item, "updated_at").unwrap_or_default(),
        data_omitted,
    })
}

/// An event of `tenant` with its whole payload, if it exists.
pub async fn get(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    id: &EventId,
) -> Result<Option<StoredEvent>, StoreError> {
    let table = &tables.events;
    let output = client
        .get_item()
        .table_name(table)
        .key("pk", s(tenant.to_string()))
        .key("sk", s(event_sk(id)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| store_error("GetItem", table, e))?;
    let Some(item) = output.item() else { return Ok(None) };
    if !item.contains_key("has_body") {
        return Ok(None);
    }
    let Some(mut stored) = from_item(item, tenant, Load::Whole) else {
        return Ok(None);
    };
    if let Some(count) = get_n(item, "chunks") {
        let mut bytes = Vec::new();
        let mut start = None;
        loop {
            let page = client
                .query()
                .table_name(table)
                .key_condition_expression("pk = :t AND begins_with(sk, :prefix)")
                .expression_attribute_values(":t", s(tenant.to_string()))
                .expression_attribute_values(":prefix", s(format!("c#{id}#")))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| store_error("Query", table, e))?;
            for chunk in page.items() {
                if let Some(b) = chunk.get("bytes").and_then(|v| v.as_b().ok()) {
                    bytes.extend_from_slice(b.as_ref());
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        let text = inflate(&bytes).ok_or_else(|| {
            StoreError::found(
                "Query",
                table,
                StoreErrorKind::Corrupt,
                format!("{count} chunks of {id} do not inflate"),
            )
        })?;
        stored.event.data = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        stored.data_omitted = false;
    }
    Ok(Some(stored))
}

/// Every attempt of an event, in order.
pub async fn attempts(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    id: &EventId,
) -> Result<Vec<Attempt>, StoreError> {
    let table = &tables.attempts;
    let mut found = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .query()
            .table_name(table)
            .key_condition_expression("pk = :t AND begins_with(sk, :prefix)")
            .expression_attribute_values(":t", s(tenant.to_string()))
            .expression_attribute_values(":prefix", s(format!("{id}#")))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| store_error("Query", table, e))?;
        for item in page.items() {
            found.push(Attempt {
                subscription_id: get_s(item, "subscription_id").unwrap_or_default(),
                attempt: get_n(item, "attempt")
                    .and_then(|a| i32::try_from(a).ok())
                    .unwrap_or_default(),
                kind: get_s(item, "kind").unwrap_or_default(),
                at: get_n(item, "at").unwrap_or_default(),
                http_status: get_n(item, "http_status").and_then(|v| i32::try_from(v).ok()),
                latency_ms: get_n(item, "latency_ms"),
                next_attempt_at: get_n(item, "next_attempt_at"),
                error: get_s(item, "error"),
                response_excerpt: get_s(item, "response_excerpt"),
            });
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    found.sort_by_key(|a| (a.attempt, a.at));
    Ok(found)
}

/// Filters of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// An exact type, or `prefix.*`.
    pub event_type: Option<String>,
    /// One status.
    pub status: Option<EventStatus>,
    /// Received at or after (ms).
    pub since: Option<i64>,
    /// Received before (ms).
    pub until: Option<i64>,
    /// Routed to this subscription.
    pub subscription_id: Option<String>,
    /// Page size.
    pub limit: usize,
    /// From a previous page.
    pub cursor: Option<String>,
}

fn bound(ms: i64, high: bool) -> String {
    let ms = u64::try_from(ms.max(0)).unwrap_or(0).min((1 << 48) - 1);
    let random = if high { (1u128 << 80) - 1 } else { 0 };
    let ulid = ulid::Ulid::from_parts(ms, random);
    format!("e#{}", EventId::from_ulid(ulid))
}

fn encode_cursor(key: &Item) -> Option<String> {
    let sk = get_s(key, "sk")?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("e1:{sk}")))
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let sk = text.strip_prefix("e1:")?;
    sk.strip_prefix("e#")?.parse::<EventId>().ok()?;
    Some(sk.to_owned())
}

pub use crate::dynamo::ListError;

/// One page of events: newest first, or oldest first from the inbox.
pub async fn list(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    query: &ListQuery,
    inbox: bool,
) -> Result<(Vec<StoredEvent>, Option<String>), ListError> {
    let table = &tables.events;
    let mut start: Option<Item> = match &query.cursor {
        Some(cursor) => {
            let sk = decode_cursor(cursor).ok_or(ListError::BadCursor)?;
            let mut key = HashMap::from([("pk".to_owned(), s(tenant.to_string())), ("sk".to_owned(), s(sk))]);
            if inbox {
                key.insert("inbox_pk".to_owned(), s(tenant.to_string()));
            }
            Some(key)
        }
        None => None,
    };
    let low = bound(query.since.unwrap_or(0), false);
    let high = bound(query.until.map_or(i64::MAX, |u| u - 1), true);
    let mut filters = vec!["attribute_exists(has_body)".to_owned()];
    let mut names: HashMap<String, String> = HashMap::new();
    let mut values: HashMap<String, AttributeValue> = HashMap::new();
    values.insert(":t".to_owned(), s(tenant.to_string()));
    values.insert(":low".to_owned(), s(low));
    values.insert(":high".to_owned(), s(high));
    match query.event_type.as_deref() {
        Some(t) if t.ends_with(".*") => {
            names.insert("#type".to_owned(), "event_type".to_owned());
            values.insert(":type".to_owned(), s(t.trim_end_matches('*')));
            filters.push("begins_with(#type, :type)".to_owned());
        }
        Some(t) => {
            names.insert("#type".to_owned(), "event_type".to_owned());
            values.insert(":type".to_owned(), s(t));
            filters.push("#type = :type".to_owned());
        }
        None => {}
    }
    if let Some(status) = query.status {
        names.insert("#status".to_owned(), "status".to_owned());
        values.insert(":status".to_owned(), s(status.as_str()));
        filters.push("#status = :status".to_owned());
    }
    if let Some(subscription) = &query.subscription_id {
        values.insert(":sub".to_owned(), s(format!("\"{subscription}\"")));
        filters.push("contains(progress, :sub)".to_owned());
    }
    let key_condition = if inbox {
        "inbox_pk = :t AND sk BETWEEN :low AND :high"
    } else {
        "pk = :t AND sk BETWEEN :low AND :high"
    };
    let mut page = Vec::new();
    let mut budget = LISTING_PAGE_BYTES;
    let mut queries = 0;
    loop {
        queries += 1;
        let mut request = client
            .query()
            .table_name(table)
            .key_condition_expression(key_condition)
            .filter_expression(filters.join(" AND "))
            .set_expression_attribute_values(Some(values.clone()))
            .scan_index_forward(inbox)
            .limit(i32::try_from((query.limit - page.len()).max(1)).unwrap_or(1000))
            .set_exclusive_start_key(start.take());
        if inbox {
            request = request.index_name("inbox");
        }
        if !names.is_empty() {
            request = request.set_expression_attribute_names(Some(names.clone()));
        }
        let output = request.send().await.map_err(|e| store_error("Query", table, e))?;
        for item in output.items() {
            if let Some(stored) = from_item(item, tenant, Load::Listing { budget }) {
                if !stored.data_omitted {
                    budget = budget.saturating_sub(item.get("data").and_then(|v| v.as_s().ok()).map_or(0, String::len));
                }
                page.push(stored);
            }
        }
        start = output.last_evaluated_key().cloned();
        if page.len() >= query.limit || start.is_none() || queries >= LISTING_QUERIES {
            break;
        }
    }
    // Where DynamoDB stopped: after the last item returned, or after the
    // last one a filter passed over.
    let next = start.as_ref().and_then(encode_cursor);
    Ok((page, next))
}

/// How long the tombstone of a deleted event is kept: longer than the
/// events topic's retention plus the retry schedule, so no record still in
/// Kafka can bring the event back or have it delivered.
const TOMBSTONE_SECONDS: i64 = 10 * 86_400;

/// Deletes an event, its chunks, its attempts and its dead letters; `false`
/// if there was none. The event item becomes a tombstone (`deleted`, no
/// body, in no index): deliveries still pending are skipped, and a record
/// read again later does not bring the event back.
pub async fn delete(client: &Client, tables: &Tables, tenant: &TenantId, id: &EventId) -> Result<bool, StoreError> {
    let written = client
        .put_item()
        .table_name(&tables.events)
        .item("pk", s(tenant.to_string()))
        .item("sk", s(event_sk(id)))
        .item("deleted", AttributeValue::Bool(true))
        .item(TTL_ATTRIBUTE, n(now_ms() / 1000 + TOMBSTONE_SECONDS))
        .condition_expression("attribute_exists(has_body)")
        .send()
        .await;
    match written {
        Ok(_) => {}
        Err(e) if is_conditional(&e) => return Ok(false),
        Err(e) => return Err(store_error("PutItem", &tables.events, e)),
    }
    delete_prefix(client, &tables.events, tenant, &format!("c#{id}#")).await?;
    delete_prefix(client, &tables.attempts, tenant, &format!("{id}#")).await?;
    delete_prefix(client, &tables.attempts, tenant, &crate::deadletter::event_prefix(id)).await?;
    Ok(true)
}

/// Deletes every item of `tenant` in `table` whose sort key starts with
/// `prefix` (everything with an empty prefix).
pub async fn delete_prefix(client: &Client, table: &str, tenant: &TenantId, prefix: &str) -> Result<usize, StoreError> {
    let mut deleted = 0;
    loop {
        let mut request = client
            .query()
            .table_name(table)
            .expression_attribute_values(":t", s(tenant.to_string()))
            .projection_expression("pk, sk")
            .limit(100);
        request = if prefix.is_empty() {
            request.key_condition_expression("pk = :t")
        } else {
            request
                .key_condition_expression("pk = :t AND begins_with(sk, :prefix)")
                .expression_attribute_values(":prefix", s(prefix))
        };
        let page = request.send().await.map_err(|e| store_error("Query", table, e))?;
        if page.items().is_empty() {
            return Ok(deleted);
        }
        let requests: Vec<WriteRequest> = page
            .items()
            .iter()
            .filter_map(|item| {
                let delete = DeleteRequest::builder()
                    .key("pk", item.get("pk")?.clone())
                    .key("sk", item.get("sk")?.clone())
                    .build()
                    .ok()?;
                Some(WriteRequest::builder().delete_request(delete).build())
            })
            .collect();
        deleted += requests.len();
        for batch in requests.chunks(25) {
            batch_write(client, table, batch.to_vec()).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_stored_inline_deflated_or_chunked() {
        let limit = 350 * 1024;
        assert!(matches!(encode_payload("x".repeat(1000), limit), Payload::Inline(_)));
        assert!(matches!(
            encode_payload("ab".repeat(400 * 1024), limit),
            Payload::Deflated(_)
        ));
        // What the other attributes leave decides: a smaller room deflates sooner.
        assert!(matches!(encode_payload("x".repeat(1000), 999), Payload::Deflated(_)));
        // Incompressible: 1 MiB of pseudo-random hex-free bytes as a JSON string.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: String = (0..1024 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'!' + (state % 90) as u8)
            })
            .filter(|c| *c != '"' && *c != '\\')
            .collect();
        let text = serde_json::to_string(&noise).unwrap_or_default();
        match encode_payload(text.clone(), limit) {
            Payload::Chunked(chunks) => {
                assert!(chunks.len() >= 2);
                assert!(chunks.iter().all(|c| c.len() <= CHUNK_SIZE));
                assert_eq!(inflate(&chunks.concat()), Some(text));
            }
            _ => panic!("1 MiB of noise was not chunked"),
        }
    }

    #[test]
    fn cursors_and_time_bounds() {
        let id = EventId::new();
        let cursor = encode_cursor(&HashMap::from([("sk".to_owned(), s(event_sk(&id)))])).unwrap_or_default();
        assert_eq!(decode_cursor(&cursor), Some(event_sk(&id)));
        assert_eq!(decode_cursor("bm9wZQ"), None);
        let low = bound(id.timestamp_ms() as i64, false);
        let high = bound(id.timestamp_ms() as i64, true);
        let key = event_sk(&id);
        assert!(low <= key && key <= high, "{low} {key} {high}");
    }
}
