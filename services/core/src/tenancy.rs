//! Tenants and API keys in DynamoDB: the `<prefix>tenants` table (`pk` =
//! tenant id) and the `<prefix>api_keys` table (`pk` = the key's SHA-256,
//! index `by_tenant`); erasing a tenant also clears its records in
//! `<prefix>idempotency`.
//!
//! An API key (`tk_…`) is shown once, when it is made; only its SHA-256 is
//! stored, as the partition key of the key table, so a lookup by key never
//! needs the tenant and never sees the key itself.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::dynamo::Tables;
use crate::event::now_ms;
use crate::ids::{KeyId, TenantId};

pub use crate::dynamo::StoreError;

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// `ten_…`.
    pub id: TenantId,
    /// A display name.
    pub name: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Events per second, when not the deployment's default.
    pub rate_limit: Option<u32>,
    /// Days stored items live, when not the deployment's default.
    pub retention_days: Option<u32>,
}

/// A newly made API key: the only time the key itself is known.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// `key_…`, for listing and revoking.
    pub id: KeyId,
    /// `tk_…`, to hand to the user once.
    pub key: String,
}

/// Makes an API key: `tk_` and 40 random base62 characters (~238 bits).
pub fn generate_api_key() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let body: String = (0..40)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("tk_{body}")
}

/// The stored form of a key: lowercase hex SHA-256.
pub fn hash_api_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(digest)
}

/// Stores a tenant.
pub async fn put_tenant(client: &Client, tables: &Tables, tenant: &Tenant) -> Result<(), StoreError> {
    let mut request = client
        .put_item()
        .table_name(&tables.tenants)
        .item("pk", AttributeValue::S(tenant.id.to_string()))
        .item("name", AttributeValue::S(tenant.name.clone()))
        .item("created_at", AttributeValue::N(tenant.created_at.to_string()));
    if let Some(limit) = tenant.rate_limit {
        request = request.item("rate_limit", AttributeValue::N(limit.to_string()));
    }
    if let Some(days) = tenant.retention_days {
        request = request.item("retention_days", AttributeValue::N(days.to_string()));
    }
    request
        .send()
        .await
        .map_err(|e| StoreError::new("PutItem", &tables.tenants, e))?;
    Ok(())
}

/// Reads a tenant.
pub async fn get_tenant(client: &Client, tables: &Tables, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
    let output = client
        .get_item()
        .table_name(&tables.tenants)
        .key("pk", AttributeValue::S(id.to_string()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| StoreError::new("GetItem", &tables.tenants, e))?;
    Ok(output.item().map(|item| Tenant {
        id: *id,
        name: string(item, "name").unwrap_or_default(),
        created_at: number(item, "created_at").unwrap_or_default(),
        rate_limit: number(item, "rate_limit").and_then(|n| u32::try_from(n).ok()),
        retention_days: number(item, "retention_days").and_then(|n| u32::try_from(n).ok()),
    }))
}

/// Makes and stores a new API key for `tenant`.
pub async fn create_api_key(client: &Client, tables: &Tables, tenant: &TenantId) -> Result<NewApiKey, StoreError> {
    let key = generate_api_key();
    let id = KeyId::new();
    client
        .put_item()
        .table_name(&tables.api_keys)
        .item("pk", AttributeValue::S(hash_api_key(&key)))
        .item("tenant", AttributeValue::S(tenant.to_string()))
        .item("key_id", AttributeValue::S(id.to_string()))
        .item("created_at", AttributeValue::N(now_ms().to_string()))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await
        .map_err(|e| StoreError::new("PutItem", &tables.api_keys, e))?;
    Ok(NewApiKey { id, key })
}

/// The tenant an API key belongs to, if the key exists and is not revoked.
pub async fn tenant_of_key(client: &Client, tables: &Tables, key: &str) -> Result<Option<TenantId>, StoreError> {
    tenant_of_key_hash(client, tables, &hash_api_key(key)).await
}

/// [`tenant_of_key`] by the key's hash.
pub async fn tenant_of_key_hash(client: &Client, tables: &Tables, hash: &str) -> Result<Option<TenantId>, StoreError> {
    let output = client
        .get_item()
        .table_name(&tables.api_keys)
        .key("pk", AttributeValue::S(hash.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| StoreError::new("GetItem", &tables.api_keys, e))?;
    Ok(output
        .item()
        .filter(|item| !item.contains_key("revoked_at"))
        .and_then(|item| string(item, "tenant"))
        .and_then(|tenant| tenant.parse().ok()))
}

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    /// `key_…`.
    pub id: KeyId,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// The keys of `tenant`, revoked ones included.
pub async fn list_api_keys(client: &Client, tables: &Tables, tenant: &TenantId) -> Result<Vec<ApiKeyInfo>, StoreError> {
    let mut keys = Vec::new();
    let request = client
        .query()
        .table_name(&tables.api_keys)
        .index_name("by_tenant")
        .key_condition_expression("tenant = :t")
        .expression_attribute_values(":t", AttributeValue::S(tenant.to_string()));
    crate::pager::query_all(request, &tables.api_keys, |page| {
        for item in page.items() {
            if let Some(id) = string(item, "key_id").and_then(|id| id.parse().ok()) {
                keys.push(ApiKeyInfo {
                    id,
                    created_at: number(item, "created_at").unwrap_or_default(),
                    revoked_at: number(item, "revoked_at"),
                });
            }
        }
        true
    })
    .await?;
    Ok(keys)
}

/// Revokes key `id` of `tenant`; `false` when the tenant has no such key.
pub async fn revoke_api_key(
    client: &Client,
    tables: &Tables,
    tenant: &TenantId,
    id: &KeyId,
) -> Result<bool, StoreError> {
    let output = client
        .query()
        .table_name(&tables.api_keys)
        .index_name("by_tenant")
        .key_condition_expression("tenant = :t AND key_id = :k")
        .expression_attribute_values(":t", AttributeValue::S(tenant.to_string()))
        .expression_attribute_values(":k", AttributeValue::S(id.to_string()))
        .send()
        .await
        .map_err(|e| StoreError::new("Query", &tables.api_keys, e))?;
    let Some(hash) = output.items().first().and_then(|item| string(item, "pk")) else {
        return Ok(false);
    };
    client
        .update_item()
        .table_name(&tables.api_keys)
        .key("pk", AttributeValue::S(hash))
        .update_expression("SET revoked_at = if_not_exists(revoked_at, :now)")
        .condition_expression("tenant = :t")
        .expression_attribute_values(":now", AttributeValue::N(now_ms().to_string()))
        .expression_attribute_values(":t", AttributeValue::S(tenant.to_string()))
        .send()
        .await
        .map_err(|e| StoreError::new("UpdateItem", &tables.api_keys, e))?;
    Ok(true)
}

pub(crate) fn string(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

pub(crate) fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_hashed() {
        let a = generate_api_key();
        let b = generate_api_key();
        assert!(a.starts_with("tk_") && a.len() == 43, "{a}");
        assert_ne!(a, b);
        // The SHA-256 test vector of FIPS 180-2.
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(hash_api_key(&a), hash_api_key(&b));
    }
}

/// Tenants by id, cached: known ones for a minute, unknown ones for five
/// seconds, at most 100,000 (least recently used go first). Concurrent
/// lookups of one id share a single read. For consumers that meet tenant ids
/// in records.
#[derive(Debug)]
pub struct TenantCache {
    client: Client,
    tables: Tables,
    cache: moka::future::Cache<TenantId, Option<Tenant>>,
}

/// How long a [`TenantCache`] keeps an answer: a tenant that exists rarely
/// changes; one that does not may be created any moment.
struct TenantExpiry;

impl moka::Expiry<TenantId, Option<Tenant>> for TenantExpiry {
    fn expire_after_create(
        &self,
        _id: &TenantId,
        tenant: &Option<Tenant>,
        _now: std::time::Instant,
    ) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(if tenant.is_some() { 60 } else { 5 }))
    }
}

impl TenantCache {
    /// A cache over the tenants table.
    pub fn new(client: Client, tables: Tables) -> Self {
        Self {
            client,
            tables,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .expire_after(TenantExpiry)
                .build(),
        }
    }

    /// The tenant, if it exists.
    pub async fn get(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        if let Some(tenant) = self.cache.get(id).await {
            return Ok(tenant);
        }
        // Boxed: moka's loading future is large, and every consumer awaits this.
        Box::pin(self.cache.try_get_with(*id, get_tenant(&self.client, &self.tables, id)))
            .await
            .map_err(|shared: std::sync::Arc<StoreError>| (*shared).clone())
    }
}

/// Erases a tenant's own items: the tenant, its API keys and its idempotency
/// records. Its events, attempts and subscriptions are erased by their
/// stores.
pub async fn erase_tenant(client: &Client, tables: &Tables, tenant: &TenantId) -> Result<(), StoreError> {
    client
        .delete_item()
        .table_name(&tables.tenants)
        .key("pk", AttributeValue::S(tenant.to_string()))
        .send()
        .await
        .map_err(|e| StoreError::new("DeleteItem", &tables.tenants, e))?;
    // Keys, by the tenant index.
    loop {
        let page = client
            .query()
            .table_name(&tables.api_keys)
            .index_name("by_tenant")
            .key_condition_expression("tenant = :t")
            .expression_attribute_values(":t", AttributeValue::S(tenant.to_string()))
            .send()
            .await
            .map_err(|e| StoreError::new("Query", &tables.api_keys, e))?;
        if page.items().is_empty() {
            break;
        }
        for item in page.items() {
            if let Some(hash) = string(item, "pk") {
                client
                    .delete_item()
                    .table_name(&tables.api_keys)
                    .key("pk", AttributeValue::S(hash))
                    .send()
                    .await
                    .map_err(|e| StoreError::new("DeleteItem", &tables.api_keys, e))?;
            }
        }
    }
    // Idempotency records are keyed `<tenant>#<key>`: a filtered scan (rare,
    // and they expire within a day anyway).
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(&tables.idempotency)
            .filter_expression("begins_with(pk, :t)")
            .expression_attribute_values(":t", AttributeValue::S(format!("{tenant}#")))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| StoreError::new("Scan", &tables.idempotency, e))?;
        for item in page.items() {
            if let Some(pk) = item.get("pk").cloned() {
                client
                    .delete_item()
                    .table_name(&tables.idempotency)
                    .key("pk", pk)
                    .send()
                    .await
                    .map_err(|e| StoreError::new("DeleteItem", &tables.idempotency, e))?;
            }
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(());
        }
    }
}
