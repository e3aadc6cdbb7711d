//! Writes of the events and attempts tables: event bodies (with the
//! outcomes that came with them), attempt items, progress changes from
//! outcomes and acknowledgements, and deletion (a tombstone, then chunks,
//! attempts and dead letters).

use std::collections::HashMap;
use std::future::Future;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};

use super::item::{
    ITEM_LIMIT, ITEM_RESERVE, Payload, attempt_item, attributes_bytes, attributes_size, body_attributes, chunk_sk,
    deflate_if_cheaper, encode_payload, event_key, event_sk,
};
use super::progress::{How, Track, update_progress};
use crate::analytics::Tally;
use crate::delivery::{Outcome, OutcomeKind};
use crate::dynamo::{
    Inserted, ItemCalls, StoreError, StoreErrorKind, TTL_ATTRIBUTE, Tables, Update, conditional, get_s, n, s,
    store_error, write_batch,
};
use crate::event::{Event, now_ms};
use crate::ids::{EventId, TenantId};
use crate::pager::Item;
use crate::status::{EventStatus, Progress};

/// Stores an event's body (idempotent; never changes its progress).
pub async fn put_event(
    client: &impl ItemCalls,
    tables: &Tables,
    event: &Event,
    expires_at: i64,
) -> Result<(), StoreError> {
    put_event_with(client, tables, event, expires_at, &[], Track::default())
        .await
        .map(|_| ())
}

/// Stores an event's body together with `outcomes` of it that arrived at the
/// same time: one write when the event is new (its first progress already
/// has them), else the body and then a monotonic progress change.
/// Idempotent. Attempt items are not written here ([`put_attempts`]).
/// `false` when the event was deleted (its tombstone stays): nothing of
/// it was written.
pub async fn put_event_with(
    client: &impl ItemCalls,
    tables: &Tables,
    event: &Event,
    expires_at: i64,
    outcomes: &[Outcome],
    track: Track<'_>,
) -> Result<bool, StoreError> {
    store_event(client, tables, event, expires_at, outcomes, track, true).await
}

/// [`put_event_with`] for an event whose item is known to exist (a batched
/// create found it, [`create_events`]): skips the create, which would be
/// refused.
pub async fn put_existing_event(
    client: &impl ItemCalls,
    tables: &Tables,
    event: &Event,
    expires_at: i64,
    outcomes: &[Outcome],
    track: Track<'_>,
) -> Result<bool, StoreError> {
    store_event(client, tables, event, expires_at, outcomes, track, false).await
}

async fn store_event(
    client: &impl ItemCalls,
    tables: &Tables,
    event: &Event,
    expires_at: i64,
    outcomes: &[Outcome],
    track: Track<'_>,
    may_be_new: bool,
) -> Result<bool, StoreError> {
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
    let payload = encode_payload(event.data.as_str().to_owned(), room - attributes);
    if let Payload::Chunked(chunks) = &payload {
        put_chunks(client, table, event, chunks, expires_at).await?;
    }
    let progress = first_progress(outcomes);
    let first = first_attributes(event, &progress);
    let mut body = body_attributes(event, extensions, payload, expires_at);
    deflate_if_cheaper(
        &mut body,
        key_and_first_bytes(&event_key(&event.tenant, &event.id), &first),
    );
    // The item exists (a batched create found it), or this writer made its
    // stub (an outcome came first): the create would fail.
    let known = !may_be_new || cache.is_some_and(|c| c.get(&event.tenant, &event.id).is_some());
    if !known && create_item(client, table, event, &body, first).await? {
        if let Some(tally) = tally {
            tally.progressed(&event.tenant, &event.id, None, &progress);
        }
        if let Some(cache) = cache {
            cache.put(&event.tenant, &event.id, 0, progress);
        }
        return Ok(true);
    }
    // The item exists (an outcome came first, or a replayed record): write
    // the body only, then the outcomes as a progress change.
    if !update_body(client, table, event, BodyUpdate::new(body)).await? {
        return Ok(false);
    }
    if outcomes.is_empty() {
        return Ok(true);
    }
    let status = apply_outcomes(client, tables, &event.tenant, &event.id, outcomes, expires_at, track).await?;
    Ok(status.is_some())
}

/// Events whose item (body and progress) would take more than this are
/// created alone ([`put_event_with`]), not in a batch ([`new_item`]), so a
/// batch of 25 stays a few megabytes at most.
pub const BATCHED_ITEM_MAX: usize = 64 * 1024;

/// Statements of one `BatchExecuteStatement` at most.
const STATEMENTS_PER_BATCH: usize = 25;

/// An event's first write, ready to be made with others
/// ([`create_events`]).
#[derive(Debug, Clone)]
pub struct NewItem {
    tenant: TenantId,
    id: EventId,
    item: Item,
    progress: Progress,
}

impl NewItem {
    /// Whether its payload is stored deflated.
    pub fn is_deflated(&self) -> bool {
        self.item.contains_key("data_z")
    }
}

/// The item that creates `event` with `outcomes` already applied: the same
/// attributes as [`put_event_with`]'s create. `None` when it must be written
/// alone: its payload does not fit inline in [`BATCHED_ITEM_MAX`] (large
/// events are deflated or chunked there).
pub fn new_item(event: &Event, expires_at: i64, outcomes: &[Outcome]) -> Option<NewItem> {
    let extensions = serde_json::to_string(&event.extensions).unwrap_or_default();
    let text = event.data.as_str();
    if attributes_size(event, &extensions) + text.len() > BATCHED_ITEM_MAX {
        return None;
    }
    let text = text.to_owned();
    let progress = first_progress(outcomes);
    let mut item = event_key(&event.tenant, &event.id);
    let mut body = body_attributes(event, extensions, Payload::Inline(text), expires_at);
    let first = first_attributes(event, &progress);
    deflate_if_cheaper(&mut body, key_and_first_bytes(&item, &first));
    item.extend(
        body.into_iter()
            .chain(first)
            .map(|(name, value)| (name.to_owned(), value)),
    );
    Some(NewItem {
        tenant: event.tenant,
        id: event.id,
        item,
        progress,
    })
}

/// Creates the items of `items`, 25 to a `BatchExecuteStatement` of PartiQL
/// `INSERT`s (the batches at once): per item, in order, what became of it.
/// An `INSERT` is refused when the item exists, as [`put_event_with`]'s
/// create is (a stub from an outcome that came first, a tombstone, a record
/// read again). An item not created is left to [`put_existing_event`]
/// ([`Inserted::Exists`]) or [`put_event_with`] (its statement failed).
/// One call per 25 events instead of one per event: the same write units,
/// a fraction of the client's and the server's work per event.
pub async fn create_events(
    client: &impl ItemCalls,
    tables: &Tables,
    items: &[NewItem],
    track: Track<'_>,
) -> Result<Vec<Inserted>, StoreError> {
    let Track { cache, tally } = track;
    let batches = items
        .chunks(STATEMENTS_PER_BATCH)
        .map(|batch| client.insert_batch(&tables.events, batch.iter().map(|new| &new.item).collect()));
    let mut results = Vec::with_capacity(items.len());
    for answered in futures::future::join_all(batches).await {
        results.extend(answered?);
    }
    for (new, result) in items.iter().zip(&results) {
        let label = match result {
            Inserted::Created => {
                if let Some(tally) = tally {
                    tally.progressed(&new.tenant, &new.id, None, &new.progress);
                }
                if let Some(cache) = cache {
                    cache.put(&new.tenant, &new.id, 0, new.progress.clone());
                }
                "created"
            }
            Inserted::Exists => "exists",
            Inserted::Failed(_) => "failed",
        };
        metrics::counter!("triggers_eventstore_batched_creates_total", "result" => label).increment(1);
    }
    Ok(results)
}

/// The chunks of a payload too large for its item, written before it.
async fn put_chunks(
    client: &impl ItemCalls,
    table: &str,
    event: &Event,
    chunks: &[Vec<u8>],
    expires_at: i64,
) -> Result<(), StoreError> {
    let items = chunks
        .iter()
        .enumerate()
        .map(|(index, bytes)| {
            HashMap::from([
                ("pk".to_owned(), s(event.tenant.to_string())),
                ("sk".to_owned(), s(chunk_sk(&event.id, index))),
                ("bytes".to_owned(), AttributeValue::B(Blob::new(bytes.clone()))),
                (TTL_ATTRIBUTE.to_owned(), n(expires_at)),
            ])
        })
        .collect();
    batch_put(client, table, items).await
}

/// Attributes as an update: `SET #b0 = :b0, …` with its names and values
/// (the body's alone never touch progress), and `REMOVE` of the payload's
/// other form.
struct BodyUpdate {
    expression: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl BodyUpdate {
    fn new(body: impl IntoIterator<Item = (&'static str, AttributeValue)>) -> Self {
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        let mut sets = Vec::new();
        let mut other_form = None;
        for (i, (name, value)) in body.into_iter().enumerate() {
            // A payload written before in the other form (inline or
            // deflated: the choice depends on the item's size then) goes.
            match name {
                "data" => other_form = Some("data_z"),
                "data_z" => other_form = Some("data"),
                _ => {}
            }
            names.insert(format!("#b{i}"), name.to_owned());
            values.insert(format!(":b{i}"), value);
            sets.push(format!("#b{i} = :b{i}"));
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if let Some(other) = other_form {
            names.insert("#other".to_owned(), other.to_owned());
            expression.push_str(" REMOVE #other");
        }
        Self {
            expression,
            names,
            values,
        }
    }
}

/// The bytes of an event item's `key` and `first` attributes (its
/// attributes besides the body).
fn key_and_first_bytes(key: &Item, first: &[(&'static str, AttributeValue)]) -> usize {
    attributes_bytes(key.iter().map(|(name, value)| (name.as_str(), value)))
        + attributes_bytes(first.iter().map(|(name, value)| (*name, value)))
}

/// An event's progress from the `outcomes` that came with its body.
fn first_progress(outcomes: &[Outcome]) -> Progress {
    let mut progress = Progress::default();
    for outcome in outcomes {
        progress.apply(outcome);
    }
    progress
}

/// What an event's first write sets besides its body: its progress, status,
/// version 0, the time, and its inbox entry if its status is in the inbox.
fn first_attributes(event: &Event, progress: &Progress) -> Vec<(&'static str, AttributeValue)> {
    let status = progress.status();
    let mut attributes = vec![
        ("progress", s(serde_json::to_string(progress).unwrap_or_default())),
        ("status", s(status.as_str())),
        ("version", n(0)),
        ("updated_at", n(now_ms())),
    ];
    if status.in_inbox() {
        attributes.push(("inbox_pk", s(event.tenant.to_string())));
    }
    attributes
}

/// Creates the event's item with its body and `first` attributes (its
/// first progress, [`first_attributes`]); `false` when an item exists
/// already (or a tombstone).
async fn create_item(
    client: &impl ItemCalls,
    table: &str,
    event: &Event,
    body: &[(&'static str, AttributeValue)],
    first: Vec<(&'static str, AttributeValue)>,
) -> Result<bool, StoreError> {
    let update = BodyUpdate::new(body.iter().cloned().chain(first));
    client
        .update(Update {
            table,
            key: event_key(&event.tenant, &event.id),
            update: update.expression,
            condition: "attribute_not_exists(version) AND attribute_not_exists(deleted)",
            names: update.names,
            values: update.values,
        })
        .await
}

/// Writes the body into an existing item; `false` when the event was
/// deleted (its tombstone stays).
async fn update_body(
    client: &impl ItemCalls,
    table: &str,
    event: &Event,
    body: BodyUpdate,
) -> Result<bool, StoreError> {
    client
        .update(Update {
            table,
            key: event_key(&event.tenant, &event.id),
            update: body.expression,
            condition: "attribute_not_exists(deleted)",
            names: body.names,
            values: body.values,
        })
        .await
}

/// Puts `items` into `table`, 25 to a `BatchWriteItem` (the batches at
/// once), until DynamoDB has processed them all.
async fn batch_put(
    client: &impl ItemCalls,
    table: &str,
    items: Vec<HashMap<String, AttributeValue>>,
) -> Result<(), StoreError> {
    let batches = items
        .chunks(25)
        .map(|batch| until_processed(batch.to_vec(), |batch| client.batch_put(table, batch)));
    for result in futures::future::join_all(batches).await {
        result?;
    }
    Ok(())
}

/// One batch of deletes, through the SDK's client, until DynamoDB has
/// processed it all.
async fn batch_write(client: &Client, table: &str, requests: Vec<WriteRequest>) -> Result<(), StoreError> {
    until_processed(requests, |requests| write_batch(client, table, requests)).await
}

/// Sends `pending` with `send` again and again, with backoff, until nothing
/// comes back unprocessed.
async fn until_processed<T, F, Sent>(mut pending: Vec<T>, mut send: F) -> Result<(), StoreError>
where
    F: FnMut(Vec<T>) -> Sent,
    Sent: Future<Output = Result<Vec<T>, StoreError>>,
{
    let mut backoff = std::time::Duration::from_millis(20);
    while !pending.is_empty() {
        pending = send(pending).await?;
        if !pending.is_empty() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
        }
    }
    Ok(())
}

/// Writes the attempt items (and dead letters) of delivery outcomes, 25 to a
/// `BatchWriteItem`. Idempotent: an attempt's key is fixed by its event,
/// subscription, number and kind.
pub async fn put_attempts(
    client: &impl ItemCalls,
    tables: &Tables,
    outcomes: &[(Outcome, i64)],
) -> Result<(), StoreError> {
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (outcome, expires_at) in outcomes {
        if let Some(item) = attempt_item(outcome, *expires_at) {
            // One write per key in a batch (DynamoDB refuses duplicates).
            if seen.insert(get_s(&item, "sk").unwrap_or_default()) {
                items.push(item);
            }
        }
    }
    batch_put(client, &tables.attempts, items).await?;
    for (outcome, expires_at) in outcomes {
        if outcome.kind == OutcomeKind::DeadLettered {
            crate::deadletter::put(client, tables, outcome, *expires_at).await?;
        }
    }
    Ok(())
}

/// Applies outcomes of one event to its progress in one read-modify-write.
/// Monotonic: outcomes that change nothing write nothing. The new status,
/// or `None` when the event was deleted (nothing is written).
pub async fn apply_outcomes(
    client: &impl ItemCalls,
    tables: &Tables,
    tenant: &TenantId,
    event: &EventId,
    outcomes: &[Outcome],
    expires_at: i64,
    track: Track<'_>,
) -> Result<Option<EventStatus>, StoreError> {
    update_progress(
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
    .await
}

/// Records an outcome: the event's progress, and for delivery outcomes the
/// attempt. Idempotent and monotonic. `None` when the event was deleted.
pub async fn apply_outcome(
    client: &impl ItemCalls,
    tables: &Tables,
    outcome: &Outcome,
    expires_at: i64,
) -> Result<Option<EventStatus>, StoreError> {
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

/// Acknowledges an event from the inbox (counted in `tally`); `false` when
/// there is no such event.
pub async fn acknowledge(
    client: &impl ItemCalls,
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
    if !conditional(written, "PutItem", &tables.events)? {
        return Ok(false);
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
