//! A development schema registry speaking the Confluent Schema Registry REST
//! subset that `schema_registry_converter` and Confluent's clients use:
//! register (same schema, same id), fetch by id, subject versions (numbered
//! and `latest`), subject listing, compatibility checks and levels (BACKWARD
//! by default; a breaking change is refused with 409).
//!
//! Schemas live in a compacted, single-partition Kafka topic (`_schemas`), so
//! they survive restarts and several instances agree: the log order decides
//! every id and version.
//!
//! For local runs and tests only. Production points the services at
//! Confluent Schema Registry, Karapace or Apicurio (Confluent-compatible API)
//! with `schema_registry.url`.
#![forbid(unsafe_code)]

pub mod api;
pub mod compat;
pub mod error;
pub mod log;
pub mod state;

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use triggers_core::CancellationToken;
use triggers_core::config::{ConfigIssue, KafkaConfig, Validate, validate_listen};
use triggers_core::ops::{self, Readiness};

pub use error::RegistryError;

/// The `[registry_server]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryServerConfig {
    /// Listen address, e.g. `127.0.0.1:8081`.
    pub listen: String,
    /// The topic holding the schemas.
    pub topic: String,
    /// The compatibility level when none is set: `BACKWARD`, `NONE`, `FULL`, ….
    pub default_compatibility: String,
}

impl Default for RegistryServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".to_owned(),
            topic: "_schemas".to_owned(),
            default_compatibility: "BACKWARD".to_owned(),
        }
    }
}

impl Validate for RegistryServerConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        validate_listen(prefix, "listen", &self.listen, issues);
        if self.topic.trim().is_empty() {
            issues.push(ConfigIssue::new(format!("{prefix}.topic"), "must not be empty"));
        }
        if compat::Level::parse(&self.default_compatibility).is_none() {
            issues.push(ConfigIssue::new(
                format!("{prefix}.default_compatibility"),
                "must be one of NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE",
            ));
        }
    }
}

/// A running registry.
#[derive(Debug)]
pub struct RunningRegistry {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Resolves when it has stopped (after `shutdown`).
    pub task: JoinHandle<Result<(), RegistryError>>,
}

impl RunningRegistry {
    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts the registry: reads the whole schema log, then serves until
/// `shutdown` is cancelled. The topic must exist (see provisioning).
pub async fn start(
    kafka: &KafkaConfig,
    config: &RegistryServerConfig,
    shutdown: CancellationToken,
) -> Result<RunningRegistry, RegistryError> {
    let default_level = compat::Level::parse(&config.default_compatibility)
        .ok_or_else(|| RegistryError::InvalidLevel(config.default_compatibility.clone()))?;
    let log = log::SchemaLog::open(kafka, &config.topic, shutdown.clone())?;
    log.catch_up(Duration::from_secs(60)).await?;
    let registry = api::Registry {
        log: log.clone(),
        default_level,
        write_lock: Default::default(),
    };
    let readiness = Readiness::new().with("kafka", ops::kafka_probe(kafka));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(registry.clone()))
            .app_data(web::PayloadConfig::new(4 * 1024 * 1024))
            .configure(ops::configure(readiness.clone()))
            .configure(api::configure)
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(&config.listen)
    .map_err(|source| RegistryError::Bind {
        listen: config.listen.clone(),
        source,
    })?;
    let running = ops::spawn_until(server, shutdown);
    let addr = running.addr;
    tracing::info!(%addr, topic = %config.topic, "schema registry listening");
    let task = tokio::spawn(async move {
        let result = running.task.await;
        // The flush blocks: off the runtime's workers.
        if let Err(e) = tokio::task::spawn_blocking(move || log.flush()).await {
            tracing::warn!(error = %e, "flush task failed");
        }
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RegistryError::Server(e)),
            Err(e) => Err(RegistryError::Join(e)),
        }
    });
    Ok(RunningRegistry { addr, task })
}
