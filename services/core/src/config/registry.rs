//! The `[schema_registry]` section: how to reach the schema registry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigIssue, Validate, check_range, join};

/// How to reach the schema registry (the dev registry locally; Confluent
/// Schema Registry, Karapace or Apicurio's Confluent API in production).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Basic auth user (Confluent Cloud API key), if any.
    pub username: Option<String>,
    /// Basic auth password, if any.
    pub password: Option<String>,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".to_owned(),
            timeout: Duration::from_secs(5),
            username: None,
            password: None,
        }
    }
}

impl Validate for SchemaRegistryConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        match url::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => issues.push(ConfigIssue::new(
                join(prefix, "url"),
                format!("`{}` is not an http(s) URL", self.url),
            )),
        }
        check_range(
            issues,
            prefix,
            "timeout",
            self.timeout,
            Duration::from_millis(100),
            Duration::from_secs(120),
        );
        if self.password.is_some() && self.username.is_none() {
            issues.push(ConfigIssue::new(
                join(prefix, "username"),
                "is required when password is set",
            ));
        }
    }
}
