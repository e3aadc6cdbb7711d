//! The `[dynamodb]` section: how to reach DynamoDB and name its tables.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigIssue, Validate, check_range, join};

/// How to reach DynamoDB and name its tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamoConfig {
    /// Endpoint override (DynamoDB Local); unset means the AWS endpoint of `region`.
    pub endpoint: Option<String>,
    /// AWS region.
    pub region: String,
    /// Prefix of every table name, per deployment.
    pub table_prefix: String,
    /// Static credentials (DynamoDB Local); unset means the default AWS chain
    /// (IRSA on EKS).
    pub access_key_id: Option<String>,
    /// Goes with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Default time to live of stored items.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The longest one attempt of a call may take before it is abandoned
    /// and retried (the SDK's attempt timeout). Without it, a request whose
    /// answer never comes (a store restarted under it) holds its caller
    /// forever: the fault suite saw a persister's partitions stop so.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// The longest a call may take, retries included.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Whether the persister makes its item writes and reads with the lean
    /// client (`dynamo::LeanClient`: the same requests without the SDK's
    /// orchestrator, about 60 % less CPU per call) instead of the SDK's.
    pub lean_client: bool,
}

impl Default for DynamoConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".to_owned(),
            table_prefix: "triggers_".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            retention: Duration::from_secs(90 * 86_400),
            attempt_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            lean_client: true,
        }
    }
}

impl Validate for DynamoConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        if let Some(endpoint) = &self.endpoint {
            match url::Url::parse(endpoint) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                _ => issues.push(ConfigIssue::new(
                    join(prefix, "endpoint"),
                    format!("`{endpoint}` is not an http(s) URL"),
                )),
            }
        }
        if self.region.trim().is_empty() {
            issues.push(ConfigIssue::new(join(prefix, "region"), "must not be empty"));
        }
        let valid_prefix = self.table_prefix.len() <= 200
            && self
                .table_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid_prefix {
            issues.push(ConfigIssue::new(
                join(prefix, "table_prefix"),
                "must be at most 200 characters of [A-Za-z0-9._-]",
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            issues.push(ConfigIssue::new(
                join(prefix, "secret_access_key"),
                "access_key_id and secret_access_key must be set together",
            ));
        }
        check_range(
            issues,
            prefix,
            "attempt_timeout",
            self.attempt_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        );
        if self.call_timeout < self.attempt_timeout || self.call_timeout > Duration::from_secs(900) {
            issues.push(ConfigIssue::new(
                join(prefix, "call_timeout"),
                "must be at least attempt_timeout and at most 15m",
            ));
        }
        check_range(
            issues,
            prefix,
            "retention",
            self.retention,
            Duration::from_secs(3_600),
            Duration::from_secs(3_650 * 86_400),
        );
    }
}
