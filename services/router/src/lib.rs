//! Routes every event on `<ns>.events` to the subscriptions that match it
//! (consumer group `triggers-router`): one `Delivery` per matching active
//! subscription on `<ns>.deliveries` (keyed by subscription, with a delivery
//! id derived from the event and the subscription, so routing an event again
//! produces the same ids), and a `routed` or `unmatched` outcome on
//! `<ns>.outcomes`.
//!
//! The subscriptions come from the compacted topic `<ns>.subscriptions`, read
//! to its end before the first event is routed and followed live after. An
//! event is matched against a table that holds every subscription change
//! written before the event was accepted (its record's timestamp; waiting
//! at most `router.freshness_wait_max`): a subscription created, changed or
//! deleted before an event was sent applies to it.
//!
//! Guarantee: at-least-once. An event's offset is stored only after Kafka
//! acknowledged every record it caused; a crash re-routes what was not
//! stored, with the same delivery ids. Records that cannot be decoded go to
//! `<ns>.events.invalid` and never stop the router.
#![forbid(unsafe_code)]

#[cfg(feature = "testkit")]
pub mod testing;

pub mod pipeline;

pub use triggers_core::subscription_table as table;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use triggers_core::CancellationToken;
use triggers_core::config::{CommonConfig, ConfigIssue, Validate};
use triggers_core::follower::Follower;
use triggers_core::ops::RunningServer;
use triggers_core::service::{ConsumerService, ConsumerSettings, ServiceError};

/// The `[router]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Where the operations endpoints listen.
    pub listen: String,
    /// The consumer group.
    pub group_id: String,
    /// Events whose records may be awaited at once.
    pub max_in_flight: usize,
    /// Bytes of delivery and outcome records awaited at once (fan-out
    /// multiplies an event: one record per matching subscription).
    pub max_in_flight_bytes: usize,
    /// How long start-up may take to read the subscription table.
    #[serde(with = "humantime_serde")]
    pub catch_up_timeout: Duration,
    /// How long an event may wait for the subscription table to hold every
    /// change written before the event was accepted (a subscription whose
    /// `201` came before an event was sent always sees it). After that it is
    /// routed with the table as it is, and counted in
    /// `triggers_router_unfresh_routes_total`; `0s` never waits.
    #[serde(with = "humantime_serde")]
    pub freshness_wait_max: Duration,
    /// The least time between two questions to the broker for where
    /// `<ns>.subscriptions` ends, asked while events come: an event waits
    /// up to about this long plus one answer for its table (less when it
    /// took longer to arrive). Shorter costs the broker more requests.
    #[serde(with = "humantime_serde")]
    pub freshness_interval: Duration,
    /// How long shutdown waits for work in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9102".to_owned(),
            group_id: "triggers-router".to_owned(),
            max_in_flight: 2_000,
            max_in_flight_bytes: 256 * 1024 * 1024,
            catch_up_timeout: Duration::from_secs(120),
            freshness_wait_max: Duration::from_secs(2),
            freshness_interval: Duration::from_millis(10),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl RouterConfig {
    /// The settings every consumer service has.
    pub fn consumer(&self) -> ConsumerSettings<'_> {
        ConsumerSettings {
            service: "router",
            listen: &self.listen,
            group_id: &self.group_id,
            max_in_flight: self.max_in_flight,
            max_in_flight_limit: 100_000,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

impl Validate for RouterConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        self.consumer().validate(prefix, issues);
        if self.max_in_flight_bytes < 1024 * 1024 {
            issues.push(ConfigIssue::new(
                format!("{prefix}.max_in_flight_bytes"),
                "must be at least 1 MiB",
            ));
        }
        if self.freshness_interval < Duration::from_millis(1) || self.freshness_interval > Duration::from_secs(1) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.freshness_interval"),
                "must be between 1ms and 1s",
            ));
        }
        if self.catch_up_timeout < Duration::from_secs(1) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.catch_up_timeout"),
                "must be at least 1s",
            ));
        }
    }
}

/// The router could not start.
pub type RouterError = ServiceError;

/// Starts the router: reads the subscription table to its end, then routes
/// until `shutdown` is cancelled, drains, stores its offsets and stops.
pub async fn start(
    common: &CommonConfig,
    config: &RouterConfig,
    shutdown: CancellationToken,
) -> Result<RunningServer, RouterError> {
    start_following(common, config, shutdown)
        .await
        .map(|(server, _)| server)
}

/// [`start`], also giving the router's own subscription table: a new
/// subscription reaches the router asynchronously, and tests wait until
/// this table knows it ([`Follower::knows`]).
async fn start_following(
    common: &CommonConfig,
    config: &RouterConfig,
    shutdown: CancellationToken,
) -> Result<(RunningServer, Follower), RouterError> {
    let service = ConsumerService::connect(common, config.consumer()).await?;
    let follower = service.follow_subscriptions(&shutdown, config.catch_up_timeout).await?;
    follower.space_rounds(config.freshness_interval);
    let consumer = service.group_consumer(&[&common.topics.events()])?;
    let pipeline = pipeline::Pipeline {
        consumer: Arc::new(consumer),
        producer: triggers_core::kafka::producer(&common.kafka, "router")?,
        codec: service.codec.clone(),
        topics: common.topics.clone(),
        follower: follower.clone(),
        tenants: triggers_core::tenancy::TenantCache::new(service.dynamo.clone(), service.tables.clone()),
        max_in_flight: config.max_in_flight,
        pacer: triggers_core::pacing::Pacer::new(&common.kafka),
        max_record_bytes: common.kafka.max_record_bytes,
        max_in_flight_bytes: config.max_in_flight_bytes,
        freshness_wait_max: config.freshness_wait_max,
        counters: pipeline::Counters::register(),
    };
    let grace = config.shutdown_grace;
    let server = service.serve(async move {
        pipeline.run(shutdown, grace).await;
        Ok(())
    })?;
    Ok((server, follower))
}
