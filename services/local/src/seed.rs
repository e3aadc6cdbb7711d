//! The demo tenant, API key, admin token and subscription of a local stack,
//! kept in `<data>/demo.json` so a second start reuses them.

use std::path::Path;
use std::time::Duration;

use rand::Rng;
use rdkafka::producer::Producer;
use serde::{Deserialize, Serialize};
use triggers_core::codec::AvroCodec;
use triggers_core::config::CommonConfig;
use triggers_core::dynamo::Tables;
use triggers_core::event::now_ms;
use triggers_core::ids::{SubscriptionId, TenantId};
use triggers_core::subscription::{self, Subscription};
use triggers_core::tenancy::{self, Tenant};

use crate::LocalError;

/// The demo credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Demo {
    /// `ten_…`.
    pub tenant_id: String,
    /// `tk_…`: the demo tenant's API key.
    pub api_key: String,
    /// `sub_…`: the subscription to the demo receiver.
    pub subscription_id: String,
    /// The operator's admin token.
    pub admin_token: String,
    /// Where the subscription delivers.
    pub target_url: String,
    /// The key of the gateway's JWTs (kept so tokens survive restarts).
    #[serde(default)]
    pub jwt_secret: String,
}

fn seed_error(e: impl std::fmt::Display) -> LocalError {
    LocalError::Seed(e.to_string())
}

/// Reuses the demo data of an earlier start (`<data>/demo.json`), or makes
/// it: a tenant, its API key, and a subscription of every event type to
/// `target_url`, stored and published on the subscriptions topic.
pub async fn ensure(
    data: &Path,
    common: &CommonConfig,
    dynamo: &aws_sdk_dynamodb::Client,
    tables: &Tables,
    target_url: &str,
) -> Result<Demo, LocalError> {
    let path = data.join("demo.json");
    let earlier: Option<Demo> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let reusable = match &earlier {
        Some(demo) => still_valid(demo, dynamo, tables).await?,
        None => false,
    };
    let demo = match earlier {
        Some(demo) if reusable => {
            tracing::info!(tenant = %demo.tenant_id, "reusing the demo tenant of an earlier start");
            demo
        }
        _ => create(dynamo, tables, target_url).await?,
    };

    // Make sure the subscription exists, points at the receiver and is on the topic.
    let tenant: TenantId = demo.tenant_id.parse().map_err(seed_error)?;
    let id: SubscriptionId = demo.subscription_id.parse().map_err(seed_error)?;
    let now = now_ms();
    let mut record = match subscription::get(dynamo, tables, &tenant, &id)
        .await
        .map_err(seed_error)?
    {
        Some(existing) => existing,
        None => Subscription {
            id,
            description: Some("Demo subscription: every event to the demo receiver".to_owned()),
            ..Subscription::new(
                tenant,
                target_url,
                vec!["*".to_owned()],
                subscription::generate_secret(),
                now,
            )
        },
    };
    if record.target_url != target_url {
        record.target_url = target_url.to_owned();
        record.updated_at = now;
        record.revision += 1;
    }
    subscription::put(dynamo, tables, &record).await.map_err(seed_error)?;
    let producer = triggers_core::kafka::producer(&common.kafka, "local-seed").map_err(seed_error)?;
    let codec = AvroCodec::new(&common.schema_registry).map_err(seed_error)?;
    subscription::publish(&producer, &codec, &common.topics.subscriptions(), &record)
        .await
        .map_err(seed_error)?;
    producer.flush(Duration::from_secs(5)).map_err(seed_error)?;

    let jwt_secret = if demo.jwt_secret.len() >= 32 {
        demo.jwt_secret.clone()
    } else {
        random_text(48)
    };
    let demo = Demo {
        target_url: target_url.to_owned(),
        jwt_secret,
        ..demo
    };
    let text = serde_json::to_vec_pretty(&demo).map_err(seed_error)?;
    std::fs::write(&path, text).map_err(|source| LocalError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(demo)
}

async fn still_valid(demo: &Demo, dynamo: &aws_sdk_dynamodb::Client, tables: &Tables) -> Result<bool, LocalError> {
    let Ok(tenant) = demo.tenant_id.parse::<TenantId>() else {
        return Ok(false);
    };
    let exists = tenancy::get_tenant(dynamo, tables, &tenant)
        .await
        .map_err(seed_error)?
        .is_some();
    let key_tenant = tenancy::tenant_of_key(dynamo, tables, &demo.api_key)
        .await
        .map_err(seed_error)?;
    Ok(exists && key_tenant == Some(tenant))
}

async fn create(dynamo: &aws_sdk_dynamodb::Client, tables: &Tables, target_url: &str) -> Result<Demo, LocalError> {
    let tenant = Tenant {
        id: TenantId::new(),
        name: "demo".to_owned(),
        created_at: now_ms(),
        rate_limit: None,
        retention_days: None,
    };
    tenancy::put_tenant(dynamo, tables, &tenant).await.map_err(seed_error)?;
    let key = tenancy::create_api_key(dynamo, tables, &tenant.id)
        .await
        .map_err(seed_error)?;
    tracing::info!(tenant = %tenant.id, "created the demo tenant");
    Ok(Demo {
        tenant_id: tenant.id.to_string(),
        api_key: key.key,
        subscription_id: SubscriptionId::new().to_string(),
        admin_token: format!("adm_{}", random_text(32)),
        target_url: target_url.to_owned(),
        jwt_secret: random_text(48),
    })
}

fn random_text(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}
