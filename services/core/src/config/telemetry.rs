//! The `[telemetry]` section: logs, traces and metrics.

use serde::{Deserialize, Serialize};

use super::{ConfigIssue, Validate, join};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (production).
    #[default]
    Json,
    /// Human-readable lines (local runs).
    Pretty,
}

/// Logs, traces and metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `tracing` filter directives, e.g. `info,triggers_gateway=debug`.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint for traces (e.g. `http://otel-collector:4318`); unset
    /// disables trace export.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces kept (0 to 1); a trace whose parent (a
    /// client's `traceparent`, a record's headers) was sampled is kept.
    pub trace_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info".to_owned(),
            log_format: LogFormat::Json,
            otlp_endpoint: None,
            trace_sample_ratio: 0.1,
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            issues.push(ConfigIssue::new(
                join(prefix, "trace_sample_ratio"),
                "must be between 0 and 1",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_level) {
            issues.push(ConfigIssue::new(
                join(prefix, "log_level"),
                format!("is not a valid filter: {e}"),
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            match url::Url::parse(endpoint) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                _ => issues.push(ConfigIssue::new(
                    join(prefix, "otlp_endpoint"),
                    format!("`{endpoint}` is not an http(s) URL"),
                )),
            }
        }
    }
}
