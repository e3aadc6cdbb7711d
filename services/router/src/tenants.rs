//! Whether a tenant exists, cached: records from Kafka-native producers name
//! their tenant, and one that does not exist is quarantined.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use triggers_core::dynamo::Tables;
use triggers_core::ids::TenantId;
use triggers_core::tenancy::{self, StoreError};

/// How long a known tenant is remembered.
const KNOWN_TTL: Duration = Duration::from_secs(60);
/// How long an unknown tenant is remembered.
const UNKNOWN_TTL: Duration = Duration::from_secs(5);

/// A cache of tenant existence.
#[derive(Debug)]
pub struct Tenants {
    dynamo: aws_sdk_dynamodb::Client,
    tables: Tables,
    cache: Mutex<HashMap<TenantId, (bool, Instant)>>,
}

impl Tenants {
    /// A cache over the tenants table.
    pub fn new(dynamo: aws_sdk_dynamodb::Client, tables: Tables) -> Self {
        Self {
            dynamo,
            tables,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `tenant` exists.
    pub async fn exists(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        if let Some((exists, until)) = self.cache.lock().get(tenant).copied()
            && until > Instant::now()
        {
            return Ok(exists);
        }
        let exists = tenancy::get_tenant(&self.dynamo, &self.tables, tenant).await?.is_some();
        let ttl = if exists { KNOWN_TTL } else { UNKNOWN_TTL };
        let mut cache = self.cache.lock();
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(*tenant, (exists, Instant::now() + ttl));
        Ok(exists)
    }
}
