//! Routes every event on `triggers.events` to the subscriptions that match it (consumer group `triggers-router`). Delivery guarantee: at-least-once.
//!
//! Status: the service skeleton. It starts, answers `/healthz`, `/readyz`
//! (Kafka and DynamoDB reachable) and `/metrics`, and stops on shutdown; its
//! consuming loop is the work of its own issue.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use triggers_core::CancellationToken;
use triggers_core::config::{CommonConfig, ConfigIssue, Validate, validate_listen};
use triggers_core::ops::{self, Readiness, RunningServer};

/// The `[router]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Where the operations endpoints listen.
    pub listen: String,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9102".to_owned(),
        }
    }
}

impl Validate for RouterConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        validate_listen(prefix, "listen", &self.listen, issues);
    }
}

/// The router could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
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

/// Starts the router; it runs until `shutdown` is cancelled.
pub async fn start(
    common: &CommonConfig,
    config: &RouterConfig,
    shutdown: CancellationToken,
) -> Result<RunningServer, RouterError> {
    let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
    let readiness = Readiness::new()
        .with("kafka", ops::kafka_probe(&common.kafka))
        .with("dynamodb", ops::dynamo_probe(&dynamo));
    let server = ops::serve_ops(&config.listen, readiness, shutdown).map_err(|source| RouterError::Bind {
        listen: config.listen.clone(),
        source,
    })?;
    tracing::info!(addr = %server.addr, "router listening");
    Ok(server)
}
