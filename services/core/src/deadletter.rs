//! The dead-letter store behind `GET /v1/dlq` and `POST /v1/dlq/redrive`.
//!
//! `<ns>.deliveries.dlq` is the log of dead-lettered deliveries, for
//! Kafka-native consumers; the API needs to list them by tenant and take
//! them out again, which a topic cannot do. So the persister also keeps one
//! item per dead-lettered (event, subscription) in the attempts table, under
//! `pk` = tenant and `sk` = `dlq#<event id>#<subscription id>` (oldest event
//! first). A redrive marks it `redriven` (through its attempt) once the new
//! delivery is in Kafka, instead of deleting it: the persister may read the
//! old `dead_lettered` outcome again (a restart, a rebalance), and that must
//! not bring the entry back; a later dead-lettering (a higher attempt)
//! replaces it. Marked entries are not listed and expire with the TTL.
//! Deleting an event deletes its entries; erasing a tenant deletes them all.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::delivery::Outcome;
use crate::dynamo::{ItemCalls, ListError, Put, TTL_ATTRIBUTE, Tables, get_n, get_s, n, s, store_error};
use crate::ids::{DeliveryId, EventId, SubscriptionId, TenantId};
use crate::tenancy::StoreError;

const PREFIX: &str = "dlq#";

/// A dead-lettered delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The delivery (derived from the event and the subscription).
    pub delivery_id: DeliveryId,
    /// The event.
    pub event_id: EventId,
    /// The subscription.
    pub subscription_id: SubscriptionId,
    /// The last attempt's number.
    pub attempt: i32,
    /// When it was dead-lettered (ms since the epoch).
    pub at: i64,
    /// The last attempt's HTTP status, if the endpoint answered.
    pub http_status: Option<i32>,
    /// The last error.
    pub error: Option<String>,
}

fn sk(event: &EventId, subscription: &SubscriptionId) -> String {
    format!("{PREFIX}{event}#{subscription}")
}

/// The prefix of an event's entries.
pub fn event_prefix(event: &EventId) -> String {
    format!("{PREFIX}{event}#")
}

/// Records a `dead_lettered` outcome (idempotent): unless the entry was
/// redriven through this attempt or a later one (an old outcome read again).
pub async fn put(
    client: &impl ItemCalls,
    tables: &Tables,
    outcome: &Outcome,
    expires_at: i64,
) -> Result<(), StoreError> {
    let Some(subscription) = &outcome.subscription_id else {
        return Ok(());
    };
    let delivery = outcome
        .delivery_id
        .unwrap_or_else(|| DeliveryId::derive(&outcome.event_id, subscription));
    let mut item = HashMap::from([
        ("pk".to_owned(), s(outcome.tenant.to_string())),
        ("sk".to_owned(), s(sk(&outcome.event_id, subscription))),
        ("delivery_id".to_owned(), s(delivery.to_string())),
        ("event_id".to_owned(), s(outcome.event_id.to_string())),
        ("subscription_id".to_owned(), s(subscription.to_string())),
        ("attempt".to_owned(), n(outcome.attempt)),
        ("at".to_owned(), n(outcome.at)),
        (TTL_ATTRIBUTE.to_owned(), n(expires_at)),
    ]);
    if let Some(status) = outcome.http_status {
        item.insert("http_status".to_owned(), n(status));
    }
    if let Some(error) = &outcome.error {
        item.insert("error".to_owned(), s(error));
    }
    // A newer redrive of this delivery keeps its entry out of the listing;
    // a refused put is that, not a failure.
    client
        .put(Put {
            table: &tables.attempts,
            item,
            condition: Some("attribute_not_exists(redriven) OR redriven < :attempt"),
            values: HashMap::from([(":attempt".to_owned(), n(outcome.attempt))]),
        })
        .await
        .map(|_| ())
}

/// Takes an entry out of the listing (after its redrive is in Kafka): marks
/// it redriven through its `attempt`.
pub async fn remove(client: &Client, tables: &Tables, tenant: &TenantId, dead: &DeadLetter) -> Result<(), StoreError> {
    let removed = client
        .update_item()
        .table_name(&tables.attempts)
        .key("pk", s(tenant.to_string()))
        .key("sk", s(sk(&dead.event_id, &dead.subscription_id)))
        .update_expression("SET redriven = :attempt")
        .condition_expression("attribute_exists(sk) AND attempt <= :attempt")
        .expression_attribute_values(":attempt", n(dead.attempt))
        .send()
        .await;
    match removed {
        Ok(_) => Ok(()),
        // Gone (the event was deleted) or dead-lettered again since: nothing to mark.
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(store_error("UpdateItem", &tables.attempts, e)),
    }
}

fn from_item(item: &HashMap<String, AttributeValue>) -> Option<DeadLetter> {
    Some(DeadLetter {
        delivery_id: get_s(item, "delivery_id")?.parse().ok()?,
        event_id: get_s(item, "event_id")?.parse().ok()?,
        subscription_id: get_s(item, "subscription_id")?.parse().ok()?,
        attempt: get_n(item, "attempt").and_then(|a| i32::try_from(a).ok())?,
        at: get_n(item, "at").unwrap_or_default(),
        http_status: get_n(item, "http_status").and_then(|v| i32::try_from(v).ok()),
        error: get_s(item, "error"),
    })
}

/// Which entries to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    /// Only this subscription's.
    pub subscription_id: Option<SubscriptionId>,
    /// Only these deliveries.
    pub delivery_ids: Option<Vec<DeliveryId>>,
    /// Page size.
    pub limit: usize,
    /// From a previous page.
    pub cursor: Option<String>,
}

/// The cursor of dead-letter listings: a dead letter's sort key.
const CURSOR: crate::pager::Cursor = crate::pager::Cursor::new("d1", |sk| sk.starts_with(PREFIX));

/// One page of a tenant's dead letters, oldest event first.
pub async fn list(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    query: &DeadLetterQuery,
) -> Result<(Vec<DeadLetter>, Option<String>), ListError> {
    let table = &tables.attempts;
    let start = match &query.cursor {
        Some(cursor) => {
            let sk = CURSOR.decode(cursor).ok_or(ListError::BadCursor)?;
            Some(HashMap::from([
                ("pk".to_owned(), s(tenant.to_string())),
                ("sk".to_owned(), s(sk)),
            ]))
        }
        None => None,
    };
    let mut values = HashMap::from([(":t".to_owned(), s(tenant.to_string())), (":p".to_owned(), s(PREFIX))]);
    let mut filters = vec!["attribute_not_exists(redriven)".to_owned()];
    if let Some(subscription) = &query.subscription_id {
        values.insert(":sub".to_owned(), s(subscription.to_string()));
        filters.push("subscription_id = :sub".to_owned());
    }
    if let Some(ids) = &query.delivery_ids {
        let names: Vec<String> = (0..ids.len()).map(|i| format!(":d{i}")).collect();
        for (name, id) in names.iter().zip(ids) {
            values.insert(name.clone(), s(id.to_string()));
        }
        filters.push(format!("delivery_id IN ({})", names.join(", ")));
    }
    let request = client
        .query()
        .table_name(table)
        .key_condition_expression("pk = :t AND begins_with(sk, :p)")
        .set_expression_attribute_values(Some(values))
        .filter_expression(filters.join(" AND "));
    // Not bounded in queries: a redrive by ids must find its letters wherever
    // they are, and answers `more` only when there are more to redrive.
    let bounds = (query.limit, usize::MAX);
    let (page, stopped_at) = crate::pager::page(request, table, start, bounds, from_item).await?;
    // Where DynamoDB stopped, past the letters a filter passed over too.
    let next = stopped_at.as_ref().and_then(|key| CURSOR.after(key));
    Ok((page, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_foreign_keys() {
        let key = sk(&EventId::new(), &SubscriptionId::new());
        assert_eq!(CURSOR.decode(&CURSOR.encode(&key)), Some(key));
        assert_eq!(CURSOR.decode(&CURSOR.encode("e#evt_x")), None);
        assert_eq!(CURSOR.decode("not base64!"), None);
    }
}
