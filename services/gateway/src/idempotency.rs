//! `Idempotency-Key`: the first request with a key claims it with a
//! conditional write, produces, and stores its answer; a later request with
//! the same key and body gets that answer back (`idempotent-replayed:
//! true`), one with another body gets 409. Concurrent duplicates race on the
//! conditional write, so exactly one of them produces; the others wait for
//! its answer. A claim whose request failed is released; one left behind by
//! a crashed gateway expires after `STALE`.
//!
//! A claim carries the seed of the request's event ids ([`Claim::Owned`]),
//! and a request that takes over a stale claim keeps it: if the first request
//! did get its event into Kafka before it died, the retry produces the same
//! event (same id, same webhook-id), not a second one. The gateway runs an
//! owned claim's produce detached from the client's connection, so a client
//! that hangs up cannot leave its claim pending.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use sha2::{Digest, Sha256};
use triggers_core::event::now_ms;
use triggers_core::ids::{EventId, TenantId};
use ulid::Ulid;

use crate::error::ApiError;

/// A pending claim older than this belongs to a request that died.
const STALE: Duration = Duration::from_secs(30);

/// What a request may do with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request owns the key: produce, then [`IdempotencyStore::complete`].
    Owned {
        /// The seed of its event ids ([`event_id`]): new with the key, kept
        /// when a stale claim is taken over.
        seed: Ulid,
    },
    /// The same request was answered before: answer this again.
    Replay {
        /// The HTTP status.
        status: u16,
        /// The JSON body.
        body: String,
    },
}

/// The idempotency table.
#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    dynamo: Client,
    table: String,
    ttl: Duration,
    wait: Duration,
}

/// Checks an `Idempotency-Key` header value.
pub fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1-255 printable ASCII characters without spaces".to_owned(),
        ));
    }
    Ok(())
}

/// The id of the `index`-th event of a request whose claim has `seed`:
/// the same for every retry of the request, ordered within it.
pub fn event_id(seed: Ulid, index: usize) -> EventId {
    let random = seed.random().wrapping_add(index as u128) & ((1u128 << 80) - 1);
    EventId::from_ulid(Ulid::from_parts(seed.timestamp_ms(), random))
}

/// The hash a key's body is compared by.
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

fn unavailable<E: std::fmt::Display>(error: E) -> ApiError {
    tracing::warn!(error = %error, "idempotency store failed");
    ApiError::Unavailable("the idempotency store is unavailable".to_owned())
}

impl IdempotencyStore {
    /// A store on `table`; duplicates wait at most `wait` for the first answer.
    pub fn new(dynamo: Client, table: String, ttl: Duration, wait: Duration) -> Self {
        Self {
            dynamo,
            table,
            ttl,
            wait,
        }
    }

    fn pk(tenant: &TenantId, key: &str) -> AttributeValue {
        AttributeValue::S(format!("{tenant}#{key}"))
    }

    /// Claims `key` for a request with body hash `hash`.
    pub async fn claim(&self, tenant: &TenantId, key: &str, hash: &str) -> Result<Claim, ApiError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let now = now_ms();
            let expires_at = now / 1000 + i64::try_from(self.ttl.as_secs()).unwrap_or(86_400);
            let seed = EventId::new().ulid();
            let put = self
                .dynamo
                .put_item()
                .table_name(&self.table)
                .item("pk", Self::pk(tenant, key))
                .item("body_hash", AttributeValue::S(hash.to_owned()))
                .item("state", AttributeValue::S("pending".to_owned()))
                .item("created_at", AttributeValue::N(now.to_string()))
                .item("seed", AttributeValue::S(seed.to_string()))
                .item(
                    triggers_core::dynamo::TTL_ATTRIBUTE,
                    AttributeValue::N(expires_at.to_string()),
                )
                .condition_expression("attribute_not_exists(pk) OR expires_at < :now_s")
                .expression_attribute_values(":now_s", AttributeValue::N((now / 1000).to_string()))
                .send()
                .await;
            match put {
                Ok(_) => return Ok(Claim::Owned { seed }),
                Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e))),
            }
            let existing = self
                .dynamo
                .get_item()
                .table_name(&self.table)
                .key("pk", Self::pk(tenant, key))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
            if let Some(item) = existing.item() {
                let field = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
                if field("body_hash").as_deref() != Some(hash) {
                    return Err(ApiError::IdempotencyConflict(key.to_owned()));
                }
                if field("state").as_deref() == Some("done") {
                    let status = item
                        .get("status")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(202);
                    return Ok(Claim::Replay {
                        status,
                        body: field("response").unwrap_or_default(),
                    });
                }
                let created_at = item
                    .get("created_at")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse::<i64>().ok())
                    .unwrap_or(0);
                let stale = now - i64::try_from(STALE.as_millis()).unwrap_or(30_000);
                if created_at < stale
                    && let Some(seed) = self.take_over(tenant, key, created_at, now).await?
                {
                    return Ok(Claim::Owned { seed });
                }
            }
            // Pending (another request is producing) or just released: wait.
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::IdempotencyInProgress(key.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes over a pending claim that went stale (its request died),
    /// keeping its seed; `None` if another request took it first.
    async fn take_over(
        &self,
        tenant: &TenantId,
        key: &str,
        created_at: i64,
        now: i64,
    ) -> Result<Option<Ulid>, ApiError> {
        let updated = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .key("pk", Self::pk(tenant, key))
            .update_expression("SET created_at = :now, seed = if_not_exists(seed, :seed)")
            .condition_expression("#state = :pending AND created_at = :seen")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":pending", AttributeValue::S("pending".to_owned()))
            .expression_attribute_values(":seen", AttributeValue::N(created_at.to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":seed", AttributeValue::S(EventId::new().ulid().to_string()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match updated {
            Ok(output) => Ok(output
                .attributes()
                .and_then(|a| a.get("seed"))
                .and_then(|v| v.as_s().ok())
                .and_then(|s| Ulid::from_string(s).ok())),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(None),
            Err(e) => Err(unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e))),
        }
    }

    /// Stores the answer of the request that owns `key`.
    pub async fn complete(&self, tenant: &TenantId, key: &str, status: u16, body: &str) -> Result<(), ApiError> {
        self.dynamo
            .update_item()
            .table_name(&self.table)
            .key("pk", Self::pk(tenant, key))
            .update_expression("SET #state = :done, #status = :status, #response = :response")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#response", "response")
            .expression_attribute_values(":done", AttributeValue::S("done".to_owned()))
            .expression_attribute_values(":status", AttributeValue::N(status.to_string()))
            .expression_attribute_values(":response", AttributeValue::S(body.to_owned()))
            .send()
            .await
            .map_err(|e| unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    /// Gives up a claim whose request failed, so a retry can succeed.
    pub async fn release(&self, tenant: &TenantId, key: &str) {
        let result = self
            .dynamo
            .delete_item()
            .table_name(&self.table)
            .key("pk", Self::pk(tenant, key))
            .condition_expression("#state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":pending", AttributeValue::S("pending".to_owned()))
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(e), "cannot release an idempotency key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_and_bounded() {
        assert!(validate_key("order-42:create").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key("has space").is_err());
        assert!(validate_key(&"k".repeat(256)).is_err());
        assert!(validate_key("naïve").is_err());
    }

    #[test]
    fn event_ids_from_a_seed_are_stable_distinct_and_ordered() {
        let seed = Ulid::from_parts(1_700_000_000_000, 12_345);
        assert_eq!(event_id(seed, 0), EventId::from_ulid(seed));
        assert_eq!(event_id(seed, 7), event_id(seed, 7));
        let ids: Vec<EventId> = (0..500).map(|i| event_id(seed, i)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|id| id.timestamp_ms() == seed.timestamp_ms()));
        // Near the top of the random range the ids wrap, and stay distinct.
        let top = Ulid::from_parts(seed.timestamp_ms(), (1u128 << 80) - 2);
        assert_ne!(event_id(top, 1), event_id(top, 2));
    }

    #[test]
    fn body_hashes_differ_by_body() {
        assert_eq!(body_hash(b"a"), body_hash(b"a"));
        assert_ne!(body_hash(b"a"), body_hash(b"b"));
        assert_eq!(body_hash(b"").len(), 64);
    }
}
