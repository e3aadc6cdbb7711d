//! Tenants and API keys in DynamoDB.
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

/// A DynamoDB call failed.
#[derive(Debug, thiserror::Error)]
#[error("DynamoDB {operation} on `{table}`: {message}")]
pub struct StoreError {
    operation: &'static str,
    table: String,
    message: String,
}

impl StoreError {
    /// Wraps an SDK error with what was being done.
    pub fn new<E: std::error::Error>(operation: &'static str, table: &str, error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(inner) = source {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            source = inner.source();
        }
        Self {
            operation,
            table: table.to_owned(),
            message,
        }
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// `ten_…`.
    pub id: TenantId,
    /// A display name.
    pub name: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
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
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores a tenant.
pub async fn put_tenant(client: &Client, tables: &Tables, tenant: &Tenant) -> Result<(), StoreError> {
    client
        .put_item()
        .table_name(&tables.tenants)
        .item("pk", AttributeValue::S(tenant.id.to_string()))
        .item("name", AttributeValue::S(tenant.name.clone()))
        .item("created_at", AttributeValue::N(tenant.created_at.to_string()))
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
    let output = client
        .get_item()
        .table_name(&tables.api_keys)
        .key("pk", AttributeValue::S(hash_api_key(key)))
        .send()
        .await
        .map_err(|e| StoreError::new("GetItem", &tables.api_keys, e))?;
    Ok(output
        .item()
        .filter(|item| !item.contains_key("revoked_at"))
        .and_then(|item| string(item, "tenant"))
        .and_then(|tenant| tenant.parse().ok()))
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
