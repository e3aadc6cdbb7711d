//! The HTTP front door: ingests events into `triggers.events` and serves the
//! public API of `shared/API.md`. Guarantee: 202 only after Kafka acknowledged.
//! Status: the service skeleton. It starts, answers `/healthz`, `/readyz`
//! (Kafka and DynamoDB reachable) and `/metrics`, and stops on shutdown; its
//! API is the work of its own issue.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use triggers_core::CancellationToken;
use triggers_core::config::{CommonConfig, ConfigIssue, Validate, validate_listen};
use triggers_core::ops::{self, Readiness, RunningServer};

/// The `[gateway]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where the API listens.
    pub listen: String,
    /// The operator's token for the admin routes; unset disables them.
    pub admin_token: Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".to_owned(),
            admin_token: None,
        }
    }
}

impl Validate for GatewayConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        validate_listen(prefix, "listen", &self.listen, issues);
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.admin_token"),
                "must be at least 16 characters",
            ));
        }
    }
}

/// The gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The operations server could not bind.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Starts the gateway; it runs until `shutdown` is cancelled.
pub async fn start(
    common: &CommonConfig,
    config: &GatewayConfig,
    shutdown: CancellationToken,
) -> Result<RunningServer, GatewayError> {
    let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
    let readiness = Readiness::new()
        .with("kafka", ops::kafka_probe(&common.kafka))
        .with("dynamodb", ops::dynamo_probe(&dynamo));
    let server = ops::serve_ops(&config.listen, readiness, shutdown).map_err(|source| GatewayError::Bind {
        listen: config.listen.clone(),
        source,
    })?;
    tracing::info!(addr = %server.addr, "gateway listening");
    Ok(server)
}
