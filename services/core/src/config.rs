//! Layered configuration: built-in defaults, then an optional TOML file, then
//! `TRIGGERS_<SECTION>__<FIELD>` environment variables.
//!
//! One file serves every service: the shared sections (`kafka`, `topics`,
//! `dynamodb`, `schema_registry`, `telemetry`) are typed here, and each
//! service reads its own section (`gateway`, `router`, …) with
//! [`ConfigSource::section`]. Every setting is checked at start-up and an
//! error names the setting (`kafka.bootstrap_servers`) and the environment
//! variable that sets it.
//!
//! Environment variables need the double underscore between section and
//! field; single-underscore names such as `TRIGGERS_GATEWAY_URL` (the ones
//! `var/local.env` exports for tools) are not configuration and are ignored.

mod dynamo;
mod kafka;
mod registry;
mod runtime;
mod source;
mod telemetry;
mod topics;

pub use dynamo::DynamoConfig;
pub use kafka::{KafkaConfig, MskIamConfig, RECORD_MARGIN, RESERVED_KAFKA_SETTINGS};
pub use registry::SchemaRegistryConfig;
pub use runtime::RuntimeConfig;
pub use source::ConfigSource;
pub use telemetry::{LogFormat, TelemetryConfig};
pub use topics::{TopicsConfig, tier_name};

use std::fmt;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// The prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "TRIGGERS_";

/// The names of the per-service sections a file may hold besides the shared
/// ones. Their contents are checked by the service that owns them.
pub const SERVICE_SECTIONS: &[&str] = &[
    "gateway",
    "router",
    "persister",
    "deliverer",
    "registry_server",
    "local",
];

/// One setting that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The dotted path of the setting, e.g. `kafka.bootstrap_servers`.
    pub setting: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigIssue {
    /// An issue with `setting`.
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            message: message.into(),
        }
    }

    /// The environment variable that sets this setting.
    pub fn env_var(&self) -> String {
        env_var_for(&self.setting)
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (env {})", self.setting, self.message, self.env_var())
    }
}

/// The environment variable for a dotted setting path.
pub fn env_var_for(setting: &str) -> String {
    format!("{ENV_PREFIX}{}", setting.replace('.', "__").to_ascii_uppercase())
}

/// Configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting could not be read (wrong type, unknown name, bad file).
    #[error("invalid setting `{setting}`: {source}")]
    Parse {
        /// The dotted path of the setting, or `<file>` for an unreadable file.
        setting: String,
        /// What the parser said.
        #[source]
        source: Box<figment::Error>,
    },
    /// Settings were read but break a rule.
    #[error("invalid configuration:\n{}", issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Every broken rule, each naming its setting.
        issues: Vec<ConfigIssue>,
    },
    /// The configuration file does not exist.
    #[error("configuration file `{path}` does not exist")]
    MissingFile {
        /// The path given.
        path: String,
    },
}

impl ConfigError {
    /// The settings this error is about.
    pub fn settings(&self) -> Vec<String> {
        match self {
            Self::Parse { setting, .. } => vec![setting.clone()],
            Self::Invalid { issues } => issues.iter().map(|i| i.setting.clone()).collect(),
            Self::MissingFile { .. } => vec!["<file>".to_owned()],
        }
    }

    fn from_figment(error: figment::Error, section: Option<&str>) -> Self {
        // Figment's path names the offending key, but where the extracted
        // section and an unknown field's name stand in it varies: take them
        // out and put them back in order.
        let unknown = match &error.kind {
            figment::error::Kind::UnknownField(field, _) => Some(field.clone()),
            _ => None,
        };
        let mut path: Vec<String> = section.map(|s| vec![s.to_owned()]).unwrap_or_default();
        path.extend(
            error
                .path
                .iter()
                .filter(|p| Some(p.as_str()) != section && Some(*p) != unknown.as_ref())
                .cloned(),
        );
        path.extend(unknown);
        let setting = if path.is_empty() {
            "<root>".to_owned()
        } else {
            path.join(".")
        };
        Self::Parse {
            setting,
            source: Box::new(error),
        }
    }
}

/// A section that can check its own settings.
pub trait Validate {
    /// Pushes one issue per broken rule; `prefix` is the section's path.
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>);
}

/// The sections every service shares.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommonConfig {
    /// How to reach Kafka.
    pub kafka: KafkaConfig,
    /// Topic names, partitions and retention.
    pub topics: TopicsConfig,
    /// How to reach DynamoDB and name its tables.
    pub dynamodb: DynamoConfig,
    /// How to reach the schema registry.
    pub schema_registry: SchemaRegistryConfig,
    /// Logs, traces and metrics.
    pub telemetry: TelemetryConfig,
    /// The threads a service process runs its tasks on.
    pub runtime: RuntimeConfig,
    /// Read by the gateway.
    #[serde(skip_serializing)]
    pub gateway: Option<IgnoredAny>,
    /// Read by the router.
    #[serde(skip_serializing)]
    pub router: Option<IgnoredAny>,
    /// Read by the persister.
    #[serde(skip_serializing)]
    pub persister: Option<IgnoredAny>,
    /// Read by the deliverer.
    #[serde(skip_serializing)]
    pub deliverer: Option<IgnoredAny>,
    /// Read by the dev schema registry.
    #[serde(skip_serializing)]
    pub registry_server: Option<IgnoredAny>,
    /// Read by the local runner.
    #[serde(skip_serializing)]
    pub local: Option<IgnoredAny>,
}

impl Validate for CommonConfig {
    fn validate(&self, _prefix: &str, issues: &mut Vec<ConfigIssue>) {
        self.kafka.validate("kafka", issues);
        self.topics.validate("topics", issues);
        self.dynamodb.validate("dynamodb", issues);
        self.schema_registry.validate("schema_registry", issues);
        self.telemetry.validate("telemetry", issues);
        self.runtime.validate("runtime", issues);
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

fn check_range(
    issues: &mut Vec<ConfigIssue>,
    prefix: &str,
    field: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) {
    if value < min || value > max {
        issues.push(ConfigIssue::new(
            join(prefix, field),
            format!(
                "must be between {} and {}, got {}",
                humantime::format_duration(min),
                humantime::format_duration(max),
                humantime::format_duration(value)
            ),
        ));
    }
}

/// Checks a listen address setting such as `0.0.0.0:8080`.
pub fn validate_listen(prefix: &str, field: &str, value: &str, issues: &mut Vec<ConfigIssue>) {
    if value.parse::<std::net::SocketAddr>().is_err() {
        issues.push(ConfigIssue::new(
            join(prefix, field),
            format!("`{value}` is not ip:port"),
        ));
    }
}

/// `humantime_serde` for a list of durations.
pub mod humantime_serde_vec {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Wrapped(#[serde(with = "humantime_serde")] Duration);

    /// Writes each duration as humantime text.
    pub fn serialize<S: Serializer>(value: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let wrapped: Vec<Wrapped> = value.iter().copied().map(Wrapped).collect();
        wrapped.serialize(s)
    }

    /// Reads a list of humantime texts (`["5s", "30s"]`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let wrapped = Vec::<Wrapped>::deserialize(d)?;
        Ok(wrapped.into_iter().map(|w| w.0).collect())
    }
}

#[cfg(test)]
mod tests;
