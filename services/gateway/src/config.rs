//! The `[gateway]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use triggers_core::config::{ConfigIssue, Validate, validate_listen};

/// The gateway's own settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where the API listens.
    pub listen: String,
    /// HTTP worker threads (0: one per core).
    pub workers: usize,
    /// The operator's token for the admin routes; unset disables them.
    pub admin_token: Option<String>,
    /// The HS256 key of the JWTs `POST /token` issues. Every replica needs the
    /// same one; unset makes a random key per process (tokens then only work
    /// on the replica that issued them).
    pub jwt_secret: Option<String>,
    /// Secrets rotated out of `jwt_secret`: their tokens keep verifying (new
    /// ones are signed with `jwt_secret`). Rotate by moving the old secret
    /// here and setting a new one; drop it after `token_ttl`.
    pub jwt_previous_secrets: Vec<String>,
    /// The `iss` of the tokens, checked on every token.
    pub jwt_issuer: String,
    /// The `aud` of the tokens, checked on every token.
    pub jwt_audience: String,
    /// How long a JWT from `POST /token` is valid.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// API requests this replica handles at once; more are shed with 503
    /// `overloaded` and `Retry-After` before their body is read. Bounds
    /// memory (at most this many bodies of up to `max_body_bytes`) and keeps
    /// latency for admitted requests when clients send more than the
    /// replica and Kafka can take.
    pub max_in_flight: usize,
    /// The most events in one batch.
    pub max_batch_events: usize,
    /// Events per second per tenant, unless the tenant has its own limit.
    pub default_rate_limit: u32,
    /// How many gateway replicas share a tenant's limit: each enforces
    /// `limit / rate_limit_replicas`. Set it to the replica count.
    pub rate_limit_replicas: u32,
    /// How long API key lookups (and tenant settings) are cached; a revoked
    /// key keeps working for at most twice this.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// How long an `Idempotency-Key` is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// Subscriptions a tenant may have: each matching subscription is one
    /// more delivery record per event (fan-out).
    pub max_subscriptions_per_tenant: usize,
    /// Take the client address (for throttling failed authentication) from
    /// `Forwarded`/`X-Forwarded-For`: only behind a load balancer that sets
    /// it (an ALB does); otherwise a client could pick its own address.
    pub trust_forwarded_for: bool,
    /// How often this replica's analytics counts (ingest latency,
    /// acknowledgements) are added to their table.
    #[serde(with = "humantime_serde")]
    pub analytics_flush: Duration,
    /// How often stored subscription changes that Kafka did not take are
    /// published again (the outbox sweep); a change is left to its own
    /// request for this long first.
    #[serde(with = "humantime_serde")]
    pub outbox_sweep_interval: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".to_owned(),
            workers: 0,
            admin_token: None,
            jwt_secret: None,
            jwt_previous_secrets: Vec::new(),
            jwt_issuer: "triggers".to_owned(),
            jwt_audience: "triggers-api".to_owned(),
            token_ttl: Duration::from_secs(24 * 3_600),
            max_body_bytes: 1024 * 1024,
            max_in_flight: 1_024,
            max_batch_events: 500,
            default_rate_limit: 1_000,
            rate_limit_replicas: 1,
            auth_cache_ttl: Duration::from_secs(2),
            idempotency_ttl: Duration::from_secs(24 * 3_600),
            max_subscriptions_per_tenant: 100,
            trust_forwarded_for: false,
            analytics_flush: Duration::from_secs(5),
            outbox_sweep_interval: Duration::from_secs(30),
        }
    }
}

impl Validate for GatewayConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        let field = |name: &str| format!("{prefix}.{name}");
        validate_listen(prefix, "listen", &self.listen, issues);
        if !(1..=1_000_000).contains(&self.max_in_flight) {
            issues.push(ConfigIssue::new(
                field("max_in_flight"),
                "must be between 1 and 1000000",
            ));
        }
        if self.workers > 256 {
            issues.push(ConfigIssue::new(field("workers"), "must be at most 256"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3_600)).contains(&self.outbox_sweep_interval) {
            issues.push(ConfigIssue::new(
                field("outbox_sweep_interval"),
                "must be between 100ms and 1h",
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.analytics_flush) {
            issues.push(ConfigIssue::new(
                field("analytics_flush"),
                "must be between 100ms and 5m",
            ));
        }
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            issues.push(ConfigIssue::new(field("admin_token"), "must be at least 16 characters"));
        }
        if self.jwt_secret.as_ref().is_some_and(|t| t.len() < 32) {
            issues.push(ConfigIssue::new(field("jwt_secret"), "must be at least 32 characters"));
        }
        if self.jwt_previous_secrets.iter().any(|t| t.len() < 32) {
            issues.push(ConfigIssue::new(
                field("jwt_previous_secrets"),
                "each must be at least 32 characters",
            ));
        }
        if !self.jwt_previous_secrets.is_empty() && self.jwt_secret.is_none() {
            issues.push(ConfigIssue::new(
                field("jwt_previous_secrets"),
                "needs jwt_secret: previous secrets only verify",
            ));
        }
        for (name, value) in [("jwt_issuer", &self.jwt_issuer), ("jwt_audience", &self.jwt_audience)] {
            if value.trim().is_empty() || value.len() > 256 {
                issues.push(ConfigIssue::new(field(name), "must be 1-256 characters"));
            }
        }
        if self.token_ttl < Duration::from_secs(60) || self.token_ttl > Duration::from_secs(7 * 86_400) {
            issues.push(ConfigIssue::new(field("token_ttl"), "must be between 1m and 7days"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            issues.push(ConfigIssue::new(
                field("max_body_bytes"),
                "must be between 1024 and 67108864",
            ));
        }
        if !(1..=10_000).contains(&self.max_batch_events) {
            issues.push(ConfigIssue::new(
                field("max_batch_events"),
                "must be between 1 and 10000",
            ));
        }
        if self.default_rate_limit == 0 {
            issues.push(ConfigIssue::new(field("default_rate_limit"), "must be at least 1"));
        }
        if self.rate_limit_replicas == 0 {
            issues.push(ConfigIssue::new(field("rate_limit_replicas"), "must be at least 1"));
        }
        if !(1..=10_000).contains(&self.max_subscriptions_per_tenant) {
            issues.push(ConfigIssue::new(
                field("max_subscriptions_per_tenant"),
                "must be between 1 and 10000",
            ));
        }
        if self.auth_cache_ttl > Duration::from_secs(300) {
            issues.push(ConfigIssue::new(field("auth_cache_ttl"), "must be at most 5m"));
        }
        if self.idempotency_ttl < Duration::from_secs(60) || self.idempotency_ttl > Duration::from_secs(30 * 86_400) {
            issues.push(ConfigIssue::new(
                field("idempotency_ttl"),
                "must be between 1m and 30days",
            ));
        }
    }
}
