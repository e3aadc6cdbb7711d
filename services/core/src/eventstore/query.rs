//! Reads of the events and attempts tables: one event with its whole
//! payload, its attempts, whether its deliveries must stop, and listings
//! (history and inbox) through the shared pager.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use super::item::{Item, Load, event_sk, from_item, inflate};
use super::{Attempt, StoredEvent};
use crate::dynamo::{ListError, StoreError, StoreErrorKind, Tables, get_n, get_s, s, store_error};
use crate::ids::{EventId, TenantId};
use crate::pager::{self, Cursor};
use crate::status::{EventStatus, Progress};

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
    Ok(output.item().is_some_and(stops_deliveries))
}

/// Whether a stored event item (its `progress` and `deleted` at least)
/// stops its deliveries.
fn stops_deliveries(item: &HashMap<String, AttributeValue>) -> bool {
    item.contains_key("deleted")
        || get_s(item, "progress")
            .and_then(|p| serde_json::from_str::<Progress>(&p).ok())
            .is_some_and(|p| p.acknowledged)
}

/// Keys per `BatchGetItem` at most (DynamoDB's limit).
pub const BATCH_GET_KEYS: usize = 100;

/// Rounds of a `BatchGetItem` for the keys DynamoDB left unprocessed
/// (throttling) before the check fails.
const BATCH_GET_ROUNDS: u32 = 8;

/// Which of `events` must have their deliveries stopped (acknowledged from
/// the inbox, or deleted), as [`deliveries_stopped`] tells of one, in
/// `BatchGetItem`s of [`BATCH_GET_KEYS`] keys: the checks of a backlog's
/// deliveries for a few calls instead of one each. The same read units
/// (each key is an eventually consistent read of its item), far fewer
/// requests and far less client work per event. An event not stored is not
/// stopped. Keys DynamoDB leaves unprocessed are asked again with backoff;
/// still unprocessed after a few rounds, the whole check fails (throttled).
pub async fn deliveries_stopped_many(
    client: &Client,
    tables: &Tables,
    events: &[(TenantId, EventId)],
) -> Result<HashSet<(TenantId, EventId)>, StoreError> {
    let mut keys: HashMap<(String, String), (TenantId, EventId)> = HashMap::with_capacity(events.len());
    for &(tenant, id) in events {
        keys.insert((tenant.to_string(), event_sk(&id)), (tenant, id));
    }
    let wanted: Vec<(String, String)> = keys.keys().cloned().collect();
    let reads = wanted
        .chunks(BATCH_GET_KEYS)
        .map(|chunk| batch_get_stops(client, &tables.events, chunk));
    let mut stopped = HashSet::new();
    for found in futures::future::try_join_all(reads).await? {
        stopped.extend(found.iter().filter_map(|key| keys.get(key)).copied());
    }
    Ok(stopped)
}

/// One `BatchGetItem` of up to 100 event items (and its rounds for the
/// unprocessed): the keys of those that stop their deliveries.
async fn batch_get_stops(
    client: &Client,
    table: &str,
    chunk: &[(String, String)],
) -> Result<Vec<(String, String)>, StoreError> {
    let key = |(pk, sk): &(String, String)| HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))]);
    let mut request = KeysAndAttributes::builder()
        .set_keys(Some(chunk.iter().map(key).collect()))
        .projection_expression("pk, sk, progress, deleted")
        .build()
        .map_err(|e| StoreError::found("BatchGetItem", table, StoreErrorKind::Invalid, e.to_string()))?;
    let mut stopped = Vec::new();
    let mut backoff = std::time::Duration::from_millis(20);
    for round in 1..=BATCH_GET_ROUNDS {
        let output = client
            .batch_get_item()
            .request_items(table, request)
            .send()
            .await
            .map_err(|e| store_error("BatchGetItem", table, e))?;
        for item in output.responses().and_then(|r| r.get(table)).into_iter().flatten() {
            if stops_deliveries(item)
                && let (Some(pk), Some(sk)) = (get_s(item, "pk"), get_s(item, "sk"))
            {
                stopped.push((pk, sk));
            }
        }
        match output.unprocessed_keys().and_then(|u| u.get(table)) {
            Some(left) if !left.keys().is_empty() => request = left.clone(),
            _ => return Ok(stopped),
        }
        if round < BATCH_GET_ROUNDS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
        }
    }
    Err(StoreError::found(
        "BatchGetItem",
        table,
        StoreErrorKind::Throttled,
        format!("keys still unprocessed after {BATCH_GET_ROUNDS} rounds"),
    ))
}

/// Listings carry up to this many payload bytes per page (each payload at
/// most [`LISTING_DATA_MAX`](super::LISTING_DATA_MAX)); the others are left
/// out (`data_omitted`) and read one by one.
pub const LISTING_PAGE_BYTES: usize = 1024 * 1024;

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
    let Some((mut stored, _)) = from_item(item, tenant, Load::Whole) else {
        return Ok(None);
    };
    if let Some(count) = get_n(item, "chunks") {
        let mut bytes = Vec::new();
        let chunks = client
            .query()
            .table_name(table)
            .key_condition_expression("pk = :t AND begins_with(sk, :prefix)")
            .expression_attribute_values(":t", s(tenant.to_string()))
            .expression_attribute_values(":prefix", s(format!("c#{id}#")))
            .consistent_read(true);
        pager::query_all(chunks, table, |page| {
            for chunk in page.items() {
                if let Some(b) = chunk.get("bytes").and_then(|v| v.as_b().ok()) {
                    bytes.extend_from_slice(b.as_ref());
                }
            }
            true
        })
        .await?;
        let text = inflate(&bytes).ok_or_else(|| {
            StoreError::found(
                "Query",
                table,
                StoreErrorKind::Corrupt,
                format!("{count} chunks of {id} do not inflate"),
            )
        })?;
        stored.event.data = crate::event::Payload::from_text(text).unwrap_or_default();
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
    let request = client
        .query()
        .table_name(table)
        .key_condition_expression("pk = :t AND begins_with(sk, :prefix)")
        .expression_attribute_values(":t", s(tenant.to_string()))
        .expression_attribute_values(":prefix", s(format!("{id}#")));
    pager::query_all(request, table, |page| {
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
        true
    })
    .await?;
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

/// The cursor of event listings: an event item's sort key.
const CURSOR: Cursor = Cursor::new("e1", |sk| {
    sk.strip_prefix("e#").is_some_and(|id| id.parse::<EventId>().is_ok())
});

/// One page of events: newest first, or oldest first from the inbox.
pub async fn list(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    query: &ListQuery,
    inbox: bool,
) -> Result<(Vec<StoredEvent>, Option<String>), ListError> {
    let table = &tables.events;
    let start: Option<Item> = match &query.cursor {
        Some(cursor) => {
            let sk = CURSOR.decode(cursor).ok_or(ListError::BadCursor)?;
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
    if low > high {
        // An empty window (`since` at or after `until`): nothing to read.
        return Ok((Vec::new(), None));
    }
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
    let mut request = client
        .query()
        .table_name(table)
        .key_condition_expression(key_condition)
        .filter_expression(filters.join(" AND "))
        .set_expression_attribute_values(Some(values))
        .scan_index_forward(inbox);
    if inbox {
        request = request.index_name("inbox");
    }
    if !names.is_empty() {
        request = request.set_expression_attribute_names(Some(names));
    }
    let mut budget = LISTING_PAGE_BYTES;
    let bounds = (query.limit, pager::MAX_QUERIES);
    let (page, stopped_at) = pager::page(request, table, start, bounds, |item| {
        let (stored, given) = from_item(item, tenant, Load::Listing { budget })?;
        budget = budget.saturating_sub(given);
        Some(stored)
    })
    .await?;
    // Where DynamoDB stopped: after the last item returned, or after the
    // last one a filter passed over.
    let next = stopped_at.as_ref().and_then(|key| CURSOR.after(key));
    Ok((page, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_and_time_bounds() {
        let id = EventId::new();
        let cursor = CURSOR.encode(&event_sk(&id));
        assert_eq!(CURSOR.decode(&cursor), Some(event_sk(&id)));
        assert_eq!(CURSOR.decode("bm9wZQ"), None);
        assert_eq!(CURSOR.decode(&CURSOR.encode("e#not-an-id")), None);
        let low = bound(id.timestamp_ms() as i64, false);
        let high = bound(id.timestamp_ms() as i64, true);
        let key = event_sk(&id);
        assert!(low <= key && key <= high, "{low} {key} {high}");
    }
}
