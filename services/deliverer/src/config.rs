//! The `[deliverer]` section of the configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use triggers_core::config::{ConfigIssue, Validate};
use triggers_core::service::ConsumerSettings;

use crate::ssrf;

/// The `[deliverer]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelivererConfig {
    /// Where the operations endpoints listen.
    pub listen: String,
    /// The consumer group of `<ns>.deliveries`; tiers use `<group>-retry-<tier>`.
    pub group_id: String,
    /// Deliveries in flight per consumer.
    pub max_in_flight: usize,
    /// Attempts in flight per subscription. A delivery that finds them all
    /// busy waits up to `park_after` for one, then waits on the first retry
    /// tier (`park_delay`) instead of holding a consumer slot.
    pub max_in_flight_per_subscription: usize,
    /// How long a delivery waits for a slot of its subscription before it is
    /// parked.
    #[serde(with = "humantime_serde")]
    pub park_after: Duration,
    /// How long a delivery waits when its subscription has no free slot.
    #[serde(with = "humantime_serde")]
    pub park_delay: Duration,
    /// The longest a webhook request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Networks webhooks may reach although private or loopback
    /// (`127.0.0.0/8` locally). Empty in production.
    pub allow_networks: Vec<String>,
    /// Webhooks reach only `allow_networks`, public addresses included:
    /// for test, fuzzing and local environments that must send no traffic
    /// off the machine.
    pub only_allowed_networks: bool,
    /// How long shutdown waits for attempts in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for DelivererConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9104".to_owned(),
            group_id: "triggers-deliverer".to_owned(),
            max_in_flight: 256,
            max_in_flight_per_subscription: 128,
            park_after: Duration::from_millis(100),
            park_delay: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            allow_networks: Vec::new(),
            only_allowed_networks: false,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl DelivererConfig {
    /// The settings every consumer service has.
    pub fn consumer(&self) -> ConsumerSettings<'_> {
        ConsumerSettings {
            service: "deliverer",
            listen: &self.listen,
            group_id: &self.group_id,
            max_in_flight: self.max_in_flight,
            max_in_flight_limit: 10_000,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

impl Validate for DelivererConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        self.consumer().validate(prefix, issues);
        if !(1..=self.max_in_flight.max(1)).contains(&self.max_in_flight_per_subscription) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.max_in_flight_per_subscription"),
                "must be between 1 and max_in_flight",
            ));
        }
        if self.park_after > Duration::from_secs(10) {
            issues.push(ConfigIssue::new(format!("{prefix}.park_after"), "must be at most 10s"));
        }
        if self.park_delay < Duration::from_millis(10) || self.park_delay > Duration::from_secs(60) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.park_delay"),
                "must be between 10ms and 1m",
            ));
        }
        if self.request_timeout < Duration::from_millis(100) || self.request_timeout > Duration::from_secs(120) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.request_timeout"),
                "must be between 100ms and 2m",
            ));
        }
        if let Err(e) = ssrf::AllowList::parse(&self.allow_networks) {
            issues.push(ConfigIssue::new(format!("{prefix}.allow_networks"), e));
        }
    }
}
