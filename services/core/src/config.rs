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

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::{DeserializeOwned, IgnoredAny};
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

/// The merged configuration layers, before typing.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    figment: Figment,
}

impl ConfigSource {
    /// Defaults, then the file (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_parts(file, std::env::vars())
    }

    /// Defaults, then the file (if any), then the given variables (those that
    /// start with [`ENV_PREFIX`] and hold a `__`). Tests use this instead of
    /// touching the process environment.
    pub fn from_parts(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::from_layers(None, file, env)
    }

    /// Defaults, then `base` (TOML defaults of a deployment, such as the
    /// local runner's), then the file, then the variables.
    pub fn from_layers(
        base: Option<&str>,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(CommonConfig::default()));
        if let Some(base) = base {
            figment = figment.merge(Toml::string(base));
        }
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile {
                    path: path.display().to_string(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(EnvVars::new(env));
        Ok(Self { figment })
    }

    /// Adds a TOML snippet on top of every layer (used by the local runner and
    /// tests to point services at their stack).
    pub fn with_toml(self, toml: &str) -> Self {
        Self {
            figment: self.figment.merge(Toml::string(toml)),
        }
    }

    /// Sets one value on top of every layer.
    pub fn with_value(self, setting: &str, value: impl Serialize) -> Self {
        Self {
            figment: self.figment.merge(Serialized::default(setting, value)),
        }
    }

    /// The shared sections, checked.
    pub fn common(&self) -> Result<CommonConfig, ConfigError> {
        let config: CommonConfig = self.figment.extract().map_err(|e| ConfigError::from_figment(e, None))?;
        let mut issues = Vec::new();
        config.validate("", &mut issues);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { issues })
        }
    }

    /// A service's own section, checked; its defaults when the section is absent.
    pub fn section<T>(&self, name: &str) -> Result<T, ConfigError>
    where
        T: DeserializeOwned + Default + Validate,
    {
        let config: T = if self.figment.find_value(name).is_ok() {
            self.figment
                .extract_inner(name)
                .map_err(|e| ConfigError::from_figment(e, Some(name)))?
        } else {
            T::default()
        };
        let mut issues = Vec::new();
        config.validate(name, &mut issues);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { issues })
        }
    }
}

/// A figment provider over `TRIGGERS_<SECTION>__<FIELD>` variables.
struct EnvVars {
    vars: Vec<(String, String)>,
}

impl EnvVars {
    fn new(env: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = env
            .into_iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(ENV_PREFIX)?;
                key.contains("__").then(|| (key.to_ascii_lowercase(), v))
            })
            .collect();
        Self { vars }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("TRIGGERS_* environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, raw) in &self.vars {
            let path: Vec<&str> = key.split("__").collect();
            let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
            insert_path(&mut root, &path, value);
        }
        Ok(Profile::Default.collect(root))
    }
}

fn insert_path(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
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
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// How to reach Kafka (MSK in production, Tansu locally).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// `client.id` prefix; the service name is appended.
    pub client_id: String,
    /// How long a produce may wait for the broker's acknowledgement before the
    /// caller is told it failed (`message.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// The bound of the producer's queue (`queue.buffering.max.messages`);
    /// beyond it, produces fail at once instead of piling up memory.
    pub producer_queue_max_messages: u32,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// The longest a fetch waits for data (`fetch.wait.max.ms`). Tansu answers
    /// only when it has passed, so keep it low locally.
    #[serde(with = "humantime_serde")]
    pub fetch_wait_max: Duration,
    /// Idle fetch pacing ([`crate::pacing`]): a consumer that has read
    /// nothing for `idle_after` pauses its partitions and looks again every
    /// `idle_fetch_interval`. Zero (the default) turns it off: brokers that
    /// long-poll (MSK) need none of it; the local stack turns it on for
    /// Tansu, which answers every fetch only after its full wait.
    #[serde(with = "humantime_serde")]
    pub idle_fetch_interval: Duration,
    /// How long a consumer reads nothing before pacing pauses it.
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    /// Consumer group session timeout (`session.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// The largest record the services produce and the topics take
    /// (`message.max.bytes` of the producers, `max.message.bytes` of the
    /// topics provisioning creates). It must exceed the gateway's
    /// `max_body_bytes` by [`RECORD_MARGIN`]: a delivery or retry record
    /// carries the whole event and a little more.
    pub max_record_bytes: usize,
    /// How often consumers in a group export their lag
    /// (`statistics.interval.ms`); zero turns it off.
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
    /// Extra librdkafka settings passed through as they are, e.g.
    /// `security.protocol = "SASL_SSL"`, `sasl.mechanism = "SCRAM-SHA-512"`.
    pub extra: BTreeMap<String, String>,
    /// Authenticate to Amazon MSK with IAM (SASL/OAUTHBEARER, tokens signed
    /// with the process's AWS credentials): `[kafka.msk_iam] region = "…"`.
    pub msk_iam: Option<MskIamConfig>,
}

/// librdkafka settings the services own; `kafka.extra` may not change them,
/// because the delivery guarantees depend on them.
pub const RESERVED_KAFKA_SETTINGS: &[&str] = &[
    "enable.idempotence",
    "acks",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "group.id",
    "bootstrap.servers",
    "message.max.bytes",
];

/// What a record derived from an event (a delivery, a retry, a dead letter)
/// may add to the event's own size: ids, attempt, times, the last error,
/// Avro framing and headers. Measured well under 4 KiB; the margin is wide.
pub const RECORD_MARGIN: usize = 64 * 1024;

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            client_id: "triggers".to_owned(),
            produce_timeout: Duration::from_secs(5),
            producer_queue_max_messages: 100_000,
            linger: Duration::from_millis(2),
            fetch_wait_max: Duration::from_millis(100),
            idle_fetch_interval: Duration::ZERO,
            idle_after: Duration::from_secs(1),
            session_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_secs(1),
            max_record_bytes: 2 * 1024 * 1024,
            statistics_interval: Duration::from_secs(5),
            extra: BTreeMap::new(),
            msk_iam: None,
        }
    }
}

impl Validate for KafkaConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        if !(1024 * 1024..=64 * 1024 * 1024).contains(&self.max_record_bytes) {
            issues.push(ConfigIssue::new(
                join(prefix, "max_record_bytes"),
                "must be between 1 MiB and 64 MiB",
            ));
        }
        let servers: Vec<&str> = self
            .bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            issues.push(ConfigIssue::new(
                join(prefix, "bootstrap_servers"),
                "must list at least one host:port",
            ));
        }
        for server in servers {
            let port_ok = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                issues.push(ConfigIssue::new(
                    join(prefix, "bootstrap_servers"),
                    format!("`{server}` is not host:port"),
                ));
            }
        }
        if self.client_id.trim().is_empty() {
            issues.push(ConfigIssue::new(join(prefix, "client_id"), "must not be empty"));
        }
        if let Some(iam) = &self.msk_iam {
            iam.validate(&join(prefix, "msk_iam"), issues);
            for setting in ["security.protocol", "sasl.mechanism", "sasl.mechanisms"] {
                if self.extra.contains_key(setting) {
                    issues.push(ConfigIssue::new(
                        join(prefix, &format!("extra.{setting}")),
                        "is set by kafka.msk_iam; remove it",
                    ));
                }
            }
        }
        check_range(
            issues,
            prefix,
            "produce_timeout",
            self.produce_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        );
        if self.producer_queue_max_messages == 0 {
            issues.push(ConfigIssue::new(
                join(prefix, "producer_queue_max_messages"),
                "must be at least 1",
            ));
        }
        check_range(
            issues,
            prefix,
            "linger",
            self.linger,
            Duration::ZERO,
            Duration::from_secs(5),
        );
        check_range(
            issues,
            prefix,
            "fetch_wait_max",
            self.fetch_wait_max,
            Duration::from_millis(1),
            Duration::from_secs(10),
        );
        check_range(
            issues,
            prefix,
            "idle_fetch_interval",
            self.idle_fetch_interval,
            Duration::ZERO,
            Duration::from_secs(10),
        );
        check_range(
            issues,
            prefix,
            "idle_after",
            self.idle_after,
            Duration::from_millis(10),
            Duration::from_secs(600),
        );
        check_range(
            issues,
            prefix,
            "session_timeout",
            self.session_timeout,
            Duration::from_secs(1),
            Duration::from_secs(300),
        );
        check_range(
            issues,
            prefix,
            "commit_interval",
            self.commit_interval,
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        for key in self.extra.keys() {
            if RESERVED_KAFKA_SETTINGS.contains(&key.as_str()) {
                issues.push(ConfigIssue::new(
                    join(prefix, &format!("extra.{key}")),
                    "is managed by Triggers and may not be overridden",
                ));
            }
        }
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
    #[serde(with = "humantime_serde_vec")]
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
            "retention",
            self.retention,
            Duration::from_secs(3_600),
            Duration::from_secs(3_650 * 86_400),
        );
    }
}

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

/// The `kafka.msk_iam` section: authenticate to MSK with IAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MskIamConfig {
    /// The AWS region of the MSK cluster (the token is signed for it).
    pub region: String,
}

impl MskIamConfig {
    pub(crate) fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        let valid = !self.region.is_empty()
            && self
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            issues.push(ConfigIssue::new(
                format!("{prefix}.region"),
                "must be an AWS region such as `us-east-1`",
            ));
        }
    }
}

#[cfg(test)]
mod tests;
