//! `Idempotency-Key`: the first request with a key claims it with a
//! conditional write, produces, and stores its answer; a later request with
//! the same key and body gets that answer back (`idempotent-replayed:
//! true`), one with another body gets 409. Concurrent duplicates race on the
//! conditional write, so exactly one of them produces; the others wait for
//! its answer. A claim whose request failed is released; one left behind by
//! a crashed gateway expires after `STALE`.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use sha2::{Digest, Sha256};
use triggers_core::event::now_ms;
use triggers_core::ids::TenantId;

use crate::error::ApiError;

/// A pending claim older than this belongs to a request that died.
const STALE: Duration = Duration::from_secs(30);

/// What a request may do with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request owns the key: produce, then [`IdempotencyStore::complete`].
    Owned,
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

/// The hash a key's body is compared by.
pub fn body_hash(body: &[u8]) -> String {
    Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect()
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
            let put = self
                .dynamo
                .put_item()
                .table_name(&self.table)
                .item("pk", Self::pk(tenant, key))
                .item("body_hash", AttributeValue::S(hash.to_owned()))
                .item("state", AttributeValue::S("pending".to_owned()))
                .item("created_at", AttributeValue::N(now.to_string()))
                .item(
                    triggers_core::dynamo::TTL_ATTRIBUTE,
                    AttributeValue::N(expires_at.to_string()),
                )
                .condition_expression(
                    "attribute_not_exists(pk) OR expires_at < :now_s OR (#state = :pending AND created_at < :stale)",
                )
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":now_s", AttributeValue::N((now / 1000).to_string()))
                .expression_attribute_values(":pending", AttributeValue::S("pending".to_owned()))
                .expression_attribute_values(
                    ":stale",
                    AttributeValue::N((now - i64::try_from(STALE.as_millis()).unwrap_or(30_000)).to_string()),
                )
                .send()
                .await;
            match put {
                Ok(_) => return Ok(Claim::Owned),
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
            }
            // Pending (another request is producing) or just released: wait.
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::IdempotencyInProgress(key.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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
    fn body_hashes_differ_by_body() {
        assert_eq!(body_hash(b"a"), body_hash(b"a"));
        assert_ne!(body_hash(b"a"), body_hash(b"b"));
        assert_eq!(body_hash(b"").len(), 64);
    }
}
