//! What every consumer service (router, persister, deliverer) has in common:
//! the settings of its section that mean the same in each
//! ([`ConsumerSettings`]), why it could not start ([`ServiceError`]), and its
//! start-up ([`ConsumerService`]): the DynamoDB client and tables, the Avro
//! codec, the subscription follower, consumers in its group, and the
//! operations server (`/health`, `/ready` on Kafka and DynamoDB, `/metrics`)
//! that runs while its work does.
//!
//! The settings stay flat in each section (`[router] group_id = …`), as
//! operators write them: serde's `flatten` does not combine with
//! `deny_unknown_fields`, which catches misspelt settings. Each section lends
//! them out through [`ConsumerSettings`] instead.

use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};

use crate::CancellationToken;
use crate::codec::{AvroCodec, CodecError};
use crate::config::{CommonConfig, ConfigIssue, KafkaConfig, validate_listen};
use crate::consume::Limits;
use crate::dynamo::Tables;
use crate::follower::{Follower, FollowerError};
use crate::kafka::{ClientError, ConsumerLog};
use crate::ops::{self, Readiness, RunningServer};

/// The settings every consumer service's section has, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings<'a> {
    /// The service's name (`router`, …): its client id and log field.
    pub service: &'static str,
    /// Where the operations endpoints listen.
    pub listen: &'a str,
    /// The consumer group.
    pub group_id: &'a str,
    /// Records worked on at once.
    pub max_in_flight: usize,
    /// The most `max_in_flight` may be for this service.
    pub max_in_flight_limit: usize,
    /// How long shutdown waits for work in flight.
    pub shutdown_grace: Duration,
}

impl ConsumerSettings<'_> {
    /// Checks the shared settings of the section at `prefix`.
    pub fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        validate_listen(prefix, "listen", self.listen, issues);
        if self.group_id.trim().is_empty() {
            issues.push(ConfigIssue::new(format!("{prefix}.group_id"), "must not be empty"));
        }
        if !(1..=self.max_in_flight_limit).contains(&self.max_in_flight) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.max_in_flight"),
                format!("must be between 1 and {}", self.max_in_flight_limit),
            ));
        }
        if self.shutdown_grace > Duration::from_secs(300) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.shutdown_grace"),
                "must be at most 5m",
            ));
        }
    }

    /// The bounds of a consume loop with these settings.
    pub fn limits(&self) -> Limits {
        Limits::new(self.max_in_flight, self.shutdown_grace)
    }
}

/// A consumer service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The operations server could not bind.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Kafka refused (a subscription, a metadata request).
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A Kafka client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The codec could not be built.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The subscription table could not be read.
    #[error("subscription follower: {0}")]
    Follower(#[from] FollowerError),
    /// The lean DynamoDB client could not be made.
    #[error(transparent)]
    Dynamo(#[from] crate::dynamo::ClientError),
}

/// A consumer service being started: the clients each one needs, made once.
pub struct ConsumerService<'a> {
    /// The shared configuration.
    pub common: &'a CommonConfig,
    /// The service's own shared settings.
    pub settings: ConsumerSettings<'a>,
    /// DynamoDB.
    pub dynamo: aws_sdk_dynamodb::Client,
    /// The table names.
    pub tables: Tables,
    /// The Avro codec (with the registry client).
    pub codec: AvroCodec,
}

impl std::fmt::Debug for ConsumerService<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerService")
            .field("settings", &self.settings)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl<'a> ConsumerService<'a> {
    /// Makes the DynamoDB client and the codec.
    pub async fn connect(common: &'a CommonConfig, settings: ConsumerSettings<'a>) -> Result<Self, ServiceError> {
        Ok(Self {
            dynamo: crate::dynamo::client(&common.dynamodb).await,
            tables: Tables::new(&common.dynamodb.table_prefix),
            codec: AvroCodec::new(&common.schema_registry)?,
            common,
            settings,
        })
    }

    /// Follows `<ns>.subscriptions` and waits until it was read to its end
    /// once (at most `timeout`).
    pub async fn follow_subscriptions(
        &self,
        shutdown: &CancellationToken,
        timeout: Duration,
    ) -> Result<Follower, ServiceError> {
        let follower = Follower::start(
            &self.common.kafka,
            &self.common.topics.subscriptions(),
            self.codec.clone(),
            self.settings.service,
            shutdown.clone(),
        )
        .await?;
        follower.caught_up(timeout).await?;
        tracing::info!(
            subscriptions = follower.table.read().len(),
            "subscription table caught up"
        );
        Ok(follower)
    }

    /// A consumer in `group` (with `kafka`'s settings) subscribed to `topics`.
    pub fn consumer(
        &self,
        kafka: &KafkaConfig,
        group: &str,
        topics: &[&str],
    ) -> Result<StreamConsumer<ConsumerLog>, ServiceError> {
        let service = self.settings.service;
        let consumer = crate::kafka::consumer(kafka, service, group, ConsumerLog::in_group(service, group))?;
        consumer.subscribe(topics)?;
        Ok(consumer)
    }

    /// A consumer in the service's own group subscribed to `topics`.
    pub fn group_consumer(&self, topics: &[&str]) -> Result<StreamConsumer<ConsumerLog>, ServiceError> {
        self.consumer(&self.common.kafka, self.settings.group_id, topics)
    }

    /// Serves the operations endpoints (ready while Kafka and DynamoDB
    /// answer) for as long as `work` runs.
    pub fn serve<W>(&self, work: W) -> Result<RunningServer, ServiceError>
    where
        W: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let readiness = Readiness::new()
            .with("kafka", ops::kafka_probe(&self.common.kafka))
            .with("dynamodb", ops::dynamo_probe(&self.dynamo));
        let listen = self.settings.listen;
        let server = ops::serve_during(listen, readiness, work).map_err(|source| ServiceError::Bind {
            listen: listen.to_owned(),
            source,
        })?;
        tracing::info!(addr = %server.addr, service = self.settings.service, "listening");
        Ok(server)
    }
}
