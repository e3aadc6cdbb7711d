//! What the handlers share: the authenticator, rate limits, the event sink
//! (`<ns>.events`), idempotency records, DynamoDB and its table names, the
//! subscription publisher (`<ns>.subscriptions`) and the analytics tally.

use triggers_core::dynamo::Tables;

use crate::auth::Authenticator;
use crate::config::GatewayConfig;
use crate::idempotency::IdempotencyStore;
use crate::ratelimit::RateLimiter;
use crate::sink::EventSink;

/// The gateway's shared state.
#[derive(Debug)]
pub struct AppState {
    /// Credentials to tenants.
    pub auth: Authenticator,
    /// Per-tenant buckets.
    pub limiter: RateLimiter,
    /// Where events go.
    pub sink: EventSink,
    /// `Idempotency-Key` records.
    pub idempotency: IdempotencyStore,
    /// DynamoDB, for the admin routes.
    pub dynamo: aws_sdk_dynamodb::Client,
    /// Table names.
    pub tables: Tables,
    /// The `[gateway]` section.
    pub config: GatewayConfig,
    /// Publishes subscription changes.
    pub subscriptions: crate::publisher::SubscriptionPublisher,
    /// Analytics counts of this replica (ingest latency, acknowledgements).
    pub tally: triggers_core::analytics::Tally,
}

impl AppState {
    /// The caller's subscription `id`; not found (404) when it is not theirs
    /// or does not parse.
    pub async fn subscription(
        &self,
        caller: &crate::auth::Caller,
        id: &str,
    ) -> Result<triggers_core::subscription::Subscription, crate::error::ApiError> {
        let parsed: triggers_core::ids::SubscriptionId = id
            .parse()
            .map_err(|_| crate::error::ApiError::NotFound(format!("subscription {id}")))?;
        triggers_core::subscription::get(&self.dynamo, &self.tables, &caller.tenant, &parsed)
            .await
            .map_err(crate::error::subscription_store_error)?
            .ok_or_else(|| crate::error::ApiError::NotFound(format!("subscription {parsed}")))
    }
}
