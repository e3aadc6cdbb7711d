//! What the handlers share.

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
    pub subscriptions: crate::subscriptions::SubscriptionPublisher,
    /// Analytics counts of this replica (ingest latency, acknowledgements).
    pub tally: triggers_core::analytics::Tally,
    /// Live updates for `GET /v1/stream`.
    pub live: crate::live::LiveFeed,
}
