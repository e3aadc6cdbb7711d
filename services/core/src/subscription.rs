//! The subscription model, as carried on the compacted topic
//! `<ns>.subscriptions` (Avro `triggers.v1.Subscription`) and stored in
//! DynamoDB (the source of truth).

use crate::kafka::KafkaProducer;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use rand::RngCore;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};

pub mod outbox;

use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};

pub use outbox::{Pending, Topic};

use crate::codec::{AvroCodec, CodecError, Contract};
use crate::dynamo::Tables;
use crate::ids::{SubscriptionId, TenantId};
use crate::tenancy::StoreError;

/// Whether a subscription receives events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionStatus {
    /// Receives matching events.
    Active,
    /// Paused by the user.
    Paused,
    /// Disabled by the system (e.g. after 410 Gone), with a reason.
    Disabled,
}

/// A signing secret; several during a rotation. Its `Debug` never shows
/// the secret, so no log line (`?subscription`) can leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSecret {
    /// `whsec_<base64>`.
    pub secret: String,
    /// When a rotated-out secret stops signing (ms since the epoch).
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningSecret")
            .field("secret", &"whsec_…(redacted)")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Batched delivery settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSettings {
    /// At most this many events per webhook.
    pub max_events: i32,
    /// Send a partial batch after this long.
    pub max_wait_ms: i32,
}

/// A tenant's webhook target and what it wants to receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// `sub_…`.
    pub id: SubscriptionId,
    /// The owner.
    pub tenant: TenantId,
    /// Where webhooks go.
    pub target_url: String,
    /// Exact types, `prefix.*` or `*`.
    pub event_types: Vec<String>,
    /// The content filter, as JSON text.
    pub filter: Option<String>,
    /// Active, paused or disabled.
    pub status: SubscriptionStatus,
    /// Why the system disabled it.
    pub disabled_reason: Option<String>,
    /// Signing secrets, newest first.
    pub secrets: Vec<SigningSecret>,
    /// Batched delivery, if asked for.
    pub batch: Option<BatchSettings>,
    /// FIFO delivery.
    pub ordered: bool,
    /// Free text.
    pub description: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch.
    pub updated_at: i64,
    /// Increases with every change; readers keep the highest.
    pub revision: i64,
}

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Storing or publishing a subscription failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionStoreError {
    /// DynamoDB refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The record could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Kafka did not take the record.
    #[error("publishing subscription {id}: {source}")]
    Kafka {
        /// The subscription.
        id: SubscriptionId,
        /// The producer's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The stored document does not parse.
    #[error("stored subscription is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// Someone else changed it first (the revision moved).
    #[error("subscription {0} was changed concurrently")]
    Conflict(SubscriptionId),
    /// A list cursor that this store did not make.
    #[error("invalid cursor")]
    BadCursor,
}

impl Subscription {
    /// A new, active subscription of `tenant` at revision 1, signed with
    /// `secret`, made at `at` (ms since the epoch): no filter, no batching,
    /// unordered, no description.
    pub fn new(
        tenant: TenantId,
        target_url: impl Into<String>,
        event_types: Vec<String>,
        secret: String,
        at: i64,
    ) -> Self {
        Self {
            id: SubscriptionId::new(),
            tenant,
            target_url: target_url.into(),
            event_types,
            filter: None,
            status: SubscriptionStatus::Active,
            disabled_reason: None,
            secrets: vec![SigningSecret {
                secret,
                expires_at: None,
            }],
            batch: None,
            ordered: false,
            description: None,
            created_at: at,
            updated_at: at,
            revision: 1,
        }
    }

    /// Whether it receives events now.
    pub fn is_active(&self) -> bool {
        self.status == SubscriptionStatus::Active
    }

    /// The secrets that sign at `now`: unexpired ones, newest first.
    pub fn signing_secrets(&self, now: i64) -> impl Iterator<Item = &str> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at.is_none_or(|at| at > now))
            .map(|s| s.secret.as_str())
    }
}

/// The `PutItem` of a subscription's item (keys, revision, JSON document).
fn put_request(
    client: &Client,
    tables: &Tables,
    subscription: &Subscription,
) -> Result<aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder, serde_json::Error> {
    let document = serde_json::to_string(subscription)?;
    Ok(client
        .put_item()
        .table_name(&tables.subscriptions)
        .set_item(Some(item(subscription, document))))
}

fn item(subscription: &Subscription, document: String) -> std::collections::HashMap<String, AttributeValue> {
    std::collections::HashMap::from([
        ("pk".to_owned(), AttributeValue::S(subscription.tenant.to_string())),
        ("sk".to_owned(), AttributeValue::S(subscription.id.to_string())),
        (
            "revision".to_owned(),
            AttributeValue::N(subscription.revision.to_string()),
        ),
        ("doc".to_owned(), AttributeValue::S(document)),
    ])
}

/// A transaction item that could not be built (a field missing: a defect).
fn invalid_request(table: &str, error: &aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::found(
        "TransactWriteItems",
        table,
        crate::dynamo::StoreErrorKind::Invalid,
        error.to_string(),
    )
}

/// Writes the subscription's item under `condition` (with `values`) and its
/// outbox marker in one transaction.
async fn put_with_marker(
    client: &Client,
    tables: &Tables,
    subscription: &Subscription,
    condition: &str,
    values: &[(&str, AttributeValue)],
) -> Result<Pending, SubscriptionStoreError> {
    let table = &tables.subscriptions;
    let document = serde_json::to_string(subscription)?;
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item(subscription, document)))
        .condition_expression(condition)
        .set_expression_attribute_values(
            (!values.is_empty()).then(|| values.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()),
        )
        .build()
        .map_err(|e| invalid_request(table, &e))?;
    let pending = Pending::new(subscription.tenant, subscription.id);
    client
        .transact_write_items()
        .transact_items(TransactWriteItem::builder().put(put).build())
        .transact_items(pending.put(tables)?)
        .send()
        .await
        .map_err(|e| {
            if outbox::first_condition_failed(&e) {
                SubscriptionStoreError::Conflict(subscription.id)
            } else {
                StoreError::new("TransactWriteItems", table, e).into()
            }
        })?;
    Ok(pending)
}

/// Stores a new subscription (fails if the id exists) with its outbox
/// marker; [`outbox::announce`] publishes it.
pub async fn create(
    client: &Client,
    tables: &Tables,
    subscription: &Subscription,
) -> Result<Pending, SubscriptionStoreError> {
    put_with_marker(client, tables, subscription, "attribute_not_exists(pk)", &[]).await
}

/// Replaces a subscription whose stored revision is `expected_revision`,
/// with its outbox marker.
pub async fn update(
    client: &Client,
    tables: &Tables,
    subscription: &Subscription,
    expected_revision: i64,
) -> Result<Pending, SubscriptionStoreError> {
    put_with_marker(
        client,
        tables,
        subscription,
        "revision = :expected",
        &[(":expected", AttributeValue::N(expected_revision.to_string()))],
    )
    .await
}

/// Deletes a subscription of `tenant` with an outbox marker (the tombstone
/// to publish); `None` if there was none.
pub async fn delete(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    id: &SubscriptionId,
) -> Result<Option<Pending>, SubscriptionStoreError> {
    let table = &tables.subscriptions;
    let delete = Delete::builder()
        .table_name(table)
        .key("pk", AttributeValue::S(tenant.to_string()))
        .key("sk", AttributeValue::S(id.to_string()))
        .condition_expression("attribute_exists(pk)")
        .build()
        .map_err(|e| invalid_request(table, &e))?;
    let pending = Pending::new(*tenant, *id);
    let deleted = client
        .transact_write_items()
        .transact_items(TransactWriteItem::builder().delete(delete).build())
        .transact_items(pending.put(tables)?)
        .send()
        .await;
    match deleted {
        Ok(_) => Ok(Some(pending)),
        Err(e) if outbox::first_condition_failed(&e) => Ok(None),
        Err(e) => Err(StoreError::new("TransactWriteItems", table, e).into()),
    }
}

/// How many subscriptions `tenant` has, counting no further than `at_most`.
pub async fn count(client: &Client, tables: &Tables, tenant: &TenantId, at_most: usize) -> Result<usize, StoreError> {
    let mut counted = 0usize;
    let request = client
        .query()
        .table_name(&tables.subscriptions)
        .key_condition_expression("pk = :t")
        .expression_attribute_values(":t", AttributeValue::S(tenant.to_string()))
        .select(aws_sdk_dynamodb::types::Select::Count);
    crate::pager::query_all(request, &tables.subscriptions, |page| {
        counted += usize::try_from(page.count()).unwrap_or(0);
        counted < at_most
    })
    .await?;
    Ok(counted)
}

/// One page of `tenant`'s subscriptions, oldest first, and the cursor of the
/// next page.
pub async fn list(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    limit: i32,
    cursor: Option<&str>,
) -> Result<(Vec<Subscription>, Option<String>), SubscriptionStoreError> {
    let table = &tables.subscriptions;
    let request = client
        .query()
        .table_name(table)
        .key_condition_expression("pk = :t")
        .expression_attribute_values(":t", AttributeValue::S(tenant.to_string()));
    let start = match cursor {
        Some(cursor) => {
            let sk = CURSOR.decode(cursor).ok_or(SubscriptionStoreError::BadCursor)?;
            Some(std::collections::HashMap::from([
                ("pk".to_owned(), AttributeValue::S(tenant.to_string())),
                ("sk".to_owned(), AttributeValue::S(sk)),
            ]))
        }
        None => None,
    };
    let limit = usize::try_from(limit).unwrap_or(1);
    let bounds = (limit, crate::pager::MAX_QUERIES);
    let (page, stopped_at) = crate::pager::page(request, table, start, bounds, |item| {
        let document = item.get("doc").and_then(|v| v.as_s().ok())?;
        Some(serde_json::from_str::<Subscription>(document))
    })
    .await?;
    let page = page.into_iter().collect::<Result<Vec<_>, _>>()?;
    let next = stopped_at.as_ref().and_then(|key| CURSOR.after(key));
    Ok((page, next))
}

/// The cursor of subscription listings: a subscription id.
const CURSOR: crate::pager::Cursor = crate::pager::Cursor::new("s1", |sk| sk.parse::<SubscriptionId>().is_ok());

/// Publishes a tombstone (the subscription is gone) to the compacted topic.
pub async fn publish_tombstone(
    producer: &KafkaProducer,
    topic: &str,
    id: &SubscriptionId,
) -> Result<(), SubscriptionStoreError> {
    let key = id.to_string();
    producer
        .send(
            FutureRecord::<String, [u8]>::to(topic).key(&key),
            rdkafka::util::Timeout::Never,
        )
        .await
        .map_err(|(source, _)| SubscriptionStoreError::Kafka { id: *id, source })?;
    Ok(())
}

/// Writes `subscription` to DynamoDB (the source of truth).
pub async fn put(client: &Client, tables: &Tables, subscription: &Subscription) -> Result<(), SubscriptionStoreError> {
    put_request(client, tables, subscription)?
        .send()
        .await
        .map_err(|e| StoreError::new("PutItem", &tables.subscriptions, e))?;
    Ok(())
}

/// Reads one subscription of `tenant`.
pub async fn get(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    id: &SubscriptionId,
) -> Result<Option<Subscription>, SubscriptionStoreError> {
    let output = client
        .get_item()
        .table_name(&tables.subscriptions)
        .key("pk", AttributeValue::S(tenant.to_string()))
        .key("sk", AttributeValue::S(id.to_string()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| StoreError::new("GetItem", &tables.subscriptions, e))?;
    match output
        .item()
        .and_then(|item| item.get("doc"))
        .and_then(|v| v.as_s().ok())
    {
        Some(document) => Ok(Some(serde_json::from_str(document)?)),
        None => Ok(None),
    }
}

/// Saves a change of a subscription read at revision `changed.revision`:
/// the next revision and `updated_at` stamped, the item replaced only if
/// nobody changed it meanwhile ([`SubscriptionStoreError::Conflict`]), then
/// the new state published to the compacted topic (when Kafka fails, the
/// outbox sweep publishes it later: the change is stored either way). Every
/// change after creation goes through here: the API's patch and secret
/// rotation, the deliverer's disabling after 410.
pub async fn save_change(
    client: &Client,
    tables: &Tables,
    topic: Topic<'_>,
    mut changed: Subscription,
) -> Result<Subscription, SubscriptionStoreError> {
    let expected = changed.revision;
    changed.revision = expected + 1;
    changed.updated_at = crate::event::now_ms();
    let pending = update(client, tables, &changed, expected).await?;
    outbox::announce_or_defer(client, tables, topic, Some(&changed), &pending).await;
    Ok(changed)
}

/// Publishes the subscription's state to the compacted topic (keyed by id),
/// and waits for Kafka's acknowledgement.
pub async fn publish(
    producer: &KafkaProducer,
    codec: &AvroCodec,
    topic: &str,
    subscription: &Subscription,
) -> Result<(), SubscriptionStoreError> {
    let payload = codec.encode(topic, Contract::Subscription, subscription).await?;
    let key = subscription.id.to_string();
    let headers = crate::kafka::trace_headers::inject(rdkafka::message::OwnedHeaders::new());
    producer
        .send(
            FutureRecord::to(topic).key(&key).payload(&payload).headers(headers),
            rdkafka::util::Timeout::Never,
        )
        .await
        .map_err(|(source, _)| SubscriptionStoreError::Kafka {
            id: subscription.id,
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_in_a_log_line_shows_no_secret() {
        let secret = generate_secret();
        let subscription = Subscription {
            id: SubscriptionId::new(),
            tenant: TenantId::new(),
            target_url: "https://example.com/hook".to_owned(),
            event_types: vec!["*".to_owned()],
            filter: None,
            status: SubscriptionStatus::Active,
            disabled_reason: None,
            secrets: vec![SigningSecret {
                secret: secret.clone(),
                expires_at: None,
            }],
            batch: None,
            ordered: false,
            description: None,
            created_at: 0,
            updated_at: 0,
            revision: 1,
        };
        let logged = format!("{subscription:?}");
        let encoded = secret.trim_start_matches("whsec_");
        assert!(!logged.contains(encoded), "{logged}");
        assert!(logged.contains("redacted"));
    }
}
