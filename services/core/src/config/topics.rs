//! The `[topics]` section: topic names, partitions, replication and
//! retention, and the retry tiers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigIssue, Validate, check_range, join};

/// Topic names, partitions and retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// The first part of every topic name: `<namespace>.events`, ….
    pub namespace: String,
    /// Partitions of each topic when provisioning creates it.
    pub partitions: i32,
    /// Replication factor when provisioning creates a topic: 3 (MSK across
    /// three zones); 1 for a single local broker.
    pub replication_factor: i32,
    /// `min.insync.replicas` of the topics provisioning creates when
    /// `replication_factor` > 1: 2, so an `acks=all` write survives one
    /// broker loss and a 202 is never backed by a single copy.
    pub min_insync_replicas: i32,
    /// How long `<ns>.events` keeps records: the replay window.
    #[serde(with = "humantime_serde")]
    pub events_retention: Duration,
    /// How long delivery, retry and outcome topics keep records.
    #[serde(with = "humantime_serde")]
    pub deliveries_retention: Duration,
    /// How long the dead-letter topic keeps records.
    #[serde(with = "humantime_serde")]
    pub dlq_retention: Duration,
    /// The delay of each retry tier, shortest first; one topic per tier.
    #[serde(with = "super::humantime_serde_vec")]
    pub retry_tiers: Vec<Duration>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            namespace: "triggers".to_owned(),
            partitions: 6,
            replication_factor: 3,
            min_insync_replicas: 2,
            events_retention: Duration::from_secs(7 * 86_400),
            deliveries_retention: Duration::from_secs(7 * 86_400),
            dlq_retention: Duration::from_secs(14 * 86_400),
            retry_tiers: [5, 30, 120, 600, 3_600, 21_600, 86_400]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        }
    }
}

impl TopicsConfig {
    /// `<ns>.events`: the ingest log.
    pub fn events(&self) -> String {
        format!("{}.events", self.namespace)
    }
    /// `<ns>.events.invalid`: records that could not be decoded.
    pub fn events_invalid(&self) -> String {
        format!("{}.events.invalid", self.namespace)
    }
    /// `<ns>.subscriptions`: compacted subscription table.
    pub fn subscriptions(&self) -> String {
        format!("{}.subscriptions", self.namespace)
    }
    /// `<ns>.deliveries`: one record per (event, matching subscription).
    pub fn deliveries(&self) -> String {
        format!("{}.deliveries", self.namespace)
    }
    /// `<ns>.deliveries.retry.<tier>` for every configured tier, shortest first.
    pub fn retries(&self) -> Vec<String> {
        self.retry_tiers
            .iter()
            .map(|d| format!("{}.deliveries.retry.{}", self.namespace, tier_name(*d)))
            .collect()
    }
    /// `<ns>.deliveries.dlq`: deliveries that exhausted every tier.
    pub fn dlq(&self) -> String {
        format!("{}.deliveries.dlq", self.namespace)
    }
    /// `<ns>.outcomes`: routing and attempt results.
    pub fn outcomes(&self) -> String {
        format!("{}.outcomes", self.namespace)
    }
    /// `<ns>.quarantine`: records a service can never process, set aside
    /// with the reason ([`crate::quarantine`]).
    pub fn quarantine(&self) -> String {
        format!("{}.quarantine", self.namespace)
    }
}

/// A short name for a tier delay: `5s`, `2m`, `1h`, `24h`.
pub fn tier_name(delay: Duration) -> String {
    let secs = delay.as_secs();
    if delay.subsec_millis() != 0 || secs == 0 {
        format!("{}ms", delay.as_millis())
    } else if secs.is_multiple_of(3_600) {
        format!("{}h", secs / 3_600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

impl Validate for TopicsConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        let valid_name = !self.namespace.is_empty()
            && self.namespace.len() <= 200
            && self
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid_name {
            issues.push(ConfigIssue::new(
                join(prefix, "namespace"),
                "must be 1-200 characters of [A-Za-z0-9._-]",
            ));
        }
        if !(1..=10_000).contains(&self.partitions) {
            issues.push(ConfigIssue::new(
                join(prefix, "partitions"),
                "must be between 1 and 10000",
            ));
        }
        if !(1..=16).contains(&self.replication_factor) {
            issues.push(ConfigIssue::new(
                join(prefix, "replication_factor"),
                "must be between 1 and 16",
            ));
        }
        if (1..=16).contains(&self.replication_factor)
            && !(1..=self.replication_factor).contains(&self.min_insync_replicas)
        {
            issues.push(ConfigIssue::new(
                join(prefix, "min_insync_replicas"),
                "must be between 1 and replication_factor",
            ));
        }
        let day = Duration::from_secs(86_400);
        check_range(
            issues,
            prefix,
            "events_retention",
            self.events_retention,
            Duration::from_secs(60),
            365 * day,
        );
        check_range(
            issues,
            prefix,
            "deliveries_retention",
            self.deliveries_retention,
            Duration::from_secs(60),
            365 * day,
        );
        check_range(
            issues,
            prefix,
            "dlq_retention",
            self.dlq_retention,
            Duration::from_secs(60),
            365 * day,
        );
        if self.retry_tiers.is_empty() {
            issues.push(ConfigIssue::new(
                join(prefix, "retry_tiers"),
                "must hold at least one delay",
            ));
        }
        if self.retry_tiers.windows(2).any(|w| w[0] >= w[1]) {
            issues.push(ConfigIssue::new(
                join(prefix, "retry_tiers"),
                "delays must be strictly increasing",
            ));
        }
        if self
            .retry_tiers
            .iter()
            .any(|d| *d < Duration::from_millis(100) || *d > 7 * day)
        {
            issues.push(ConfigIssue::new(
                join(prefix, "retry_tiers"),
                "each delay must be between 100ms and 7days",
            ));
        }
    }
}
