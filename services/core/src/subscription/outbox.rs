//! The outbox of subscription changes: a change is written to DynamoDB
//! (the source of truth) together with a marker, in one transaction; the
//! marker goes once the new state is on the compacted topic. When Kafka
//! fails in between, the change is not lost to the routers and deliverers:
//! [`sweep`] (the gateway runs it periodically) publishes the current state
//! of every subscription whose marker is older than a request could take,
//! and removes the marker.
//!
//! Markers live in the subscriptions table under `pk` = `outbox` (no tenant
//! id looks like that), `sk` = `<tenant>#<subscription>`, with a random
//! `token` (so only the change that wrote a marker, or a sweep that read
//! it, removes it: a newer change's marker stays) and `at` (ms).

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};

use super::{Subscription, SubscriptionStoreError, publish, publish_tombstone};
use crate::codec::AvroCodec;
use crate::dynamo::{Tables, get_n, get_s};
use crate::ids::{SubscriptionId, TenantId};
use crate::kafka::KafkaProducer;
use crate::tenancy::StoreError;

const OUTBOX_PK: &str = "outbox";

/// Where subscription states are published: producer, codec, topic.
pub type Topic<'a> = (&'a KafkaProducer, &'a AvroCodec, &'a str);

/// A change stored but not yet known to be on the topic: its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The subscription's tenant.
    pub tenant: TenantId,
    /// The subscription.
    pub id: SubscriptionId,
    token: String,
}

impl Pending {
    pub(super) fn new(tenant: TenantId, id: SubscriptionId) -> Self {
        Self {
            tenant,
            id,
            token: ulid::Ulid::new().to_string(),
        }
    }

    fn sk(&self) -> String {
        format!("{}#{}", self.tenant, self.id)
    }

    /// The marker's `Put`, for the change's transaction.
    pub(super) fn put(&self, tables: &Tables) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&tables.subscriptions)
            .item("pk", AttributeValue::S(OUTBOX_PK.to_owned()))
            .item("sk", AttributeValue::S(self.sk()))
            .item("tenant", AttributeValue::S(self.tenant.to_string()))
            .item("id", AttributeValue::S(self.id.to_string()))
            .item("token", AttributeValue::S(self.token.clone()))
            .item("at", AttributeValue::N(crate::event::now_ms().to_string()))
            .build()
            .map_err(|e| super::invalid_request(&tables.subscriptions, &e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }
}

/// Whether a transaction was cancelled because the first item's condition
/// failed (the subscription changed meanwhile, or is not there).
pub(super) fn first_condition_failed<R>(error: &aws_sdk_dynamodb::error::SdkError<TransactWriteItemsError, R>) -> bool {
    match error.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => cancelled
            .cancellation_reasons()
            .first()
            .and_then(|reason| reason.code())
            .is_some_and(|code| code == "ConditionalCheckFailed"),
        _ => false,
    }
}

/// Publishes a stored change (`state`: the subscription as saved; `None`:
/// it was deleted, a tombstone), then removes its marker. On failure the
/// marker stays and [`sweep`] publishes the change later.
pub async fn announce(
    client: &Client,
    tables: &Tables,
    topic: Topic<'_>,
    state: Option<&Subscription>,
    pending: &Pending,
) -> Result<(), SubscriptionStoreError> {
    let (producer, codec, topic) = topic;
    match state {
        Some(subscription) => publish(producer, codec, topic, subscription).await?,
        None => publish_tombstone(producer, topic, &pending.id).await?,
    }
    clear(client, tables, pending).await
}

/// [`announce`], and when it fails, a warning and
/// `triggers_subscription_changes_unannounced_total`: the change is stored
/// and the sweep publishes it.
pub async fn announce_or_defer(
    client: &Client,
    tables: &Tables,
    topic: Topic<'_>,
    state: Option<&Subscription>,
    pending: &Pending,
) {
    if let Err(e) = announce(client, tables, topic, state, pending).await {
        metrics::counter!("triggers_subscription_changes_unannounced_total").increment(1);
        tracing::warn!(
            subscription = %pending.id,
            error = %e,
            "a subscription change is stored but not yet published; the outbox sweep will publish it"
        );
    }
}

/// Removes the marker, unless a newer change replaced it.
async fn clear(client: &Client, tables: &Tables, pending: &Pending) -> Result<(), SubscriptionStoreError> {
    let removed = client
        .delete_item()
        .table_name(&tables.subscriptions)
        .key("pk", AttributeValue::S(OUTBOX_PK.to_owned()))
        .key("sk", AttributeValue::S(pending.sk()))
        .condition_expression("#token = :token")
        .expression_attribute_names("#token", "token")
        .expression_attribute_values(":token", AttributeValue::S(pending.token.clone()))
        .send()
        .await;
    // Refused: a newer change replaced the marker, which stays.
    crate::dynamo::conditional(removed, "DeleteItem", &tables.subscriptions)?;
    Ok(())
}

/// The markers older than `older_than_ms` (ms since the epoch), oldest
/// first: changes whose own request did not publish them.
pub async fn pending(client: &Client, tables: &Tables, older_than_ms: i64) -> Result<Vec<Pending>, StoreError> {
    let mut found = Vec::new();
    let request = client
        .query()
        .table_name(&tables.subscriptions)
        .key_condition_expression("pk = :outbox")
        .expression_attribute_values(":outbox", AttributeValue::S(OUTBOX_PK.to_owned()))
        .consistent_read(true);
    crate::pager::query_all(request, &tables.subscriptions, |page| {
        for item in page.items() {
            let at = get_n(item, "at").unwrap_or(0);
            let parsed = (
                get_s(item, "tenant").and_then(|t| t.parse::<TenantId>().ok()),
                get_s(item, "id").and_then(|i| i.parse::<SubscriptionId>().ok()),
                get_s(item, "token"),
            );
            if let (Some(tenant), Some(id), Some(token)) = parsed
                && at <= older_than_ms
            {
                found.push((at, Pending { tenant, id, token }));
            }
        }
        true
    })
    .await?;
    found.sort_by_key(|(at, _)| *at);
    Ok(found.into_iter().map(|(_, pending)| pending).collect())
}

/// Publishes the current state of every subscription whose marker is older
/// than `grace` (its request had time to publish it), removing the markers:
/// how many were published.
pub async fn sweep(
    client: &Client,
    tables: &Tables,
    topic: Topic<'_>,
    grace: std::time::Duration,
) -> Result<usize, SubscriptionStoreError> {
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let markers = pending(client, tables, crate::event::now_ms().saturating_sub(grace_ms)).await?;
    let mut published = 0;
    for pending in &markers {
        let current = super::get(client, tables, &pending.tenant, &pending.id).await?;
        announce(client, tables, topic, current.as_ref(), pending).await?;
        published += 1;
        metrics::counter!("triggers_subscription_outbox_published_total").increment(1);
        tracing::info!(subscription = %pending.id, deleted = current.is_none(), "published a deferred subscription change");
    }
    Ok(published)
}
