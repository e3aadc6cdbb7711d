use std::io::Write;
use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn common_with(pairs: &[(&str, &str)]) -> Result<CommonConfig, ConfigError> {
    ConfigSource::from_parts(None, env(pairs))?.common()
}

#[test]
fn defaults_are_valid() {
    let config = common_with(&[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.topics.events(), "triggers.events");
    assert_eq!(
        config.topics.retries(),
        [
            "triggers.deliveries.retry.5s",
            "triggers.deliveries.retry.30s",
            "triggers.deliveries.retry.2m",
            "triggers.deliveries.retry.10m",
            "triggers.deliveries.retry.1h",
            "triggers.deliveries.retry.6h",
            "triggers.deliveries.retry.24h",
        ]
    );
}

#[test]
fn environment_overrides_file_overrides_defaults() {
    let mut file = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    writeln!(
        file,
        "[kafka]\nbootstrap_servers = \"file:1\"\nlinger = \"7ms\"\n[topics]\npartitions = 3\n"
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let source = ConfigSource::from_parts(
        Some(file.path()),
        env(&[
            ("TRIGGERS_KAFKA__BOOTSTRAP_SERVERS", "env:2"),
            ("TRIGGERS_TOPICS__RETRY_TIERS", "[\"1s\", \"2s\"]"),
            ("TRIGGERS_RUNTIME__WORKER_THREADS", "1"),
            // Not configuration: single underscore, as in var/local.env.
            ("TRIGGERS_GATEWAY_URL", "http://x"),
            ("OTHER__THING", "1"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = source.common().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.kafka.bootstrap_servers, "env:2");
    assert_eq!(config.kafka.linger, Duration::from_millis(7));
    assert_eq!(config.topics.partitions, 3);
    assert_eq!(
        config.topics.retry_tiers,
        [Duration::from_secs(1), Duration::from_secs(2)]
    );
    assert_eq!(config.dynamodb.table_prefix, "triggers_");
    assert_eq!(config.runtime.worker_threads, 1);
}

#[test]
fn the_runtime_has_the_worker_threads_asked_for() {
    let runtime = |threads| {
        RuntimeConfig {
            worker_threads: threads,
        }
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(runtime(1).metrics().num_workers(), 1);
    assert_eq!(runtime(3).metrics().num_workers(), 3);
    // A rebalance waits for running work in block_in_place, which only a
    // multi-threaded runtime allows: it must work with a single worker too.
    let waited = runtime(1).block_on(async { tokio::task::block_in_place(|| 7) });
    assert_eq!(waited, 7);
}

/// Every setting, given a value of the wrong type or one that breaks a rule,
/// yields an error that names exactly that setting.
#[test]
fn every_invalid_setting_is_named() {
    let cases: &[(&str, &str, &str)] = &[
        ("TRIGGERS_KAFKA__BOOTSTRAP_SERVERS", "", "kafka.bootstrap_servers"),
        (
            "TRIGGERS_KAFKA__BOOTSTRAP_SERVERS",
            "no-port",
            "kafka.bootstrap_servers",
        ),
        (
            "TRIGGERS_KAFKA__BOOTSTRAP_SERVERS",
            "host:99999",
            "kafka.bootstrap_servers",
        ),
        ("TRIGGERS_KAFKA__CLIENT_ID", " ", "kafka.client_id"),
        ("TRIGGERS_KAFKA__PRODUCE_TIMEOUT", "soon", "kafka.produce_timeout"),
        ("TRIGGERS_KAFKA__PRODUCE_TIMEOUT", "1ms", "kafka.produce_timeout"),
        (
            "TRIGGERS_KAFKA__PRODUCER_QUEUE_MAX_MESSAGES",
            "0",
            "kafka.producer_queue_max_messages",
        ),
        (
            "TRIGGERS_KAFKA__PRODUCER_QUEUE_MAX_MESSAGES",
            "-3",
            "kafka.producer_queue_max_messages",
        ),
        ("TRIGGERS_KAFKA__LINGER", "10s", "kafka.linger"),
        ("TRIGGERS_KAFKA__FETCH_WAIT_MAX", "0s", "kafka.fetch_wait_max"),
        ("TRIGGERS_KAFKA__SESSION_TIMEOUT", "1h", "kafka.session_timeout"),
        ("TRIGGERS_KAFKA__COMMIT_INTERVAL", "2min", "kafka.commit_interval"),
        ("TRIGGERS_KAFKA__EXTRA__ACKS", "1", "kafka.extra.acks"),
        ("TRIGGERS_KAFKA__NO_SUCH_SETTING", "1", "kafka.no_such_setting"),
        ("TRIGGERS_TOPICS__NAMESPACE", "bad name!", "topics.namespace"),
        ("TRIGGERS_TOPICS__PARTITIONS", "0", "topics.partitions"),
        ("TRIGGERS_TOPICS__PARTITIONS", "many", "topics.partitions"),
        ("TRIGGERS_TOPICS__REPLICATION_FACTOR", "0", "topics.replication_factor"),
        (
            "TRIGGERS_TOPICS__MIN_INSYNC_REPLICAS",
            "4",
            "topics.min_insync_replicas",
        ),
        ("TRIGGERS_TOPICS__EVENTS_RETENTION", "1s", "topics.events_retention"),
        (
            "TRIGGERS_TOPICS__DELIVERIES_RETENTION",
            "1000days",
            "topics.deliveries_retention",
        ),
        ("TRIGGERS_TOPICS__DLQ_RETENTION", "x", "topics.dlq_retention"),
        ("TRIGGERS_TOPICS__RETRY_TIERS", "[]", "topics.retry_tiers"),
        (
            "TRIGGERS_TOPICS__RETRY_TIERS",
            "[\"30s\", \"5s\"]",
            "topics.retry_tiers",
        ),
        ("TRIGGERS_TOPICS__RETRY_TIERS", "[\"1ms\"]", "topics.retry_tiers"),
        ("TRIGGERS_DYNAMODB__ENDPOINT", "not a url", "dynamodb.endpoint"),
        ("TRIGGERS_DYNAMODB__REGION", "", "dynamodb.region"),
        ("TRIGGERS_DYNAMODB__TABLE_PREFIX", "bad prefix", "dynamodb.table_prefix"),
        (
            "TRIGGERS_DYNAMODB__ACCESS_KEY_ID",
            "only-half",
            "dynamodb.secret_access_key",
        ),
        ("TRIGGERS_DYNAMODB__RETENTION", "1m", "dynamodb.retention"),
        ("TRIGGERS_SCHEMA_REGISTRY__URL", "ftp://x", "schema_registry.url"),
        ("TRIGGERS_SCHEMA_REGISTRY__TIMEOUT", "1ms", "schema_registry.timeout"),
        ("TRIGGERS_SCHEMA_REGISTRY__PASSWORD", "p", "schema_registry.username"),
        ("TRIGGERS_TELEMETRY__LOG_LEVEL", "info,[", "telemetry.log_level"),
        ("TRIGGERS_TELEMETRY__LOG_FORMAT", "xml", "telemetry.log_format"),
        (
            "TRIGGERS_TELEMETRY__OTLP_ENDPOINT",
            "collector",
            "telemetry.otlp_endpoint",
        ),
        ("TRIGGERS_RUNTIME__WORKER_THREADS", "257", "runtime.worker_threads"),
        ("TRIGGERS_RUNTIME__WORKER_THREADS", "-1", "runtime.worker_threads"),
        ("TRIGGERS_NOPE__X", "1", "nope"),
    ];
    for (var, value, setting) in cases {
        let error = match common_with(&[(var, value)]) {
            Ok(_) => panic!("{var}={value:?} was accepted"),
            Err(e) => e,
        };
        assert_eq!(
            error.settings(),
            vec![(*setting).to_owned()],
            "{var}={value:?} gave: {error}"
        );
        let text = error.to_string();
        assert!(
            text.contains(setting),
            "{var}={value:?}: message does not name {setting}: {text}"
        );
    }
}

#[test]
fn several_issues_are_reported_together() {
    let error = common_with(&[("TRIGGERS_TOPICS__PARTITIONS", "0"), ("TRIGGERS_KAFKA__CLIENT_ID", "")])
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    let mut settings = error.settings();
    settings.sort();
    assert_eq!(settings, ["kafka.client_id", "topics.partitions"]);
    assert!(error.to_string().contains("TRIGGERS_TOPICS__PARTITIONS"), "{error}");
}

#[test]
fn unknown_key_in_file_is_named() {
    let mut file = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    writeln!(file, "[dynamodb]\nendpont = \"http://localhost:8000\"\n").unwrap_or_else(|e| panic!("{e}"));
    let error = ConfigSource::from_parts(Some(file.path()), Vec::new())
        .and_then(|s| s.common())
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(error.settings(), ["dynamodb.endpont"]);
}

#[test]
fn missing_file_is_an_error() {
    let error = ConfigSource::from_parts(Some(std::path::Path::new("/no/such/triggers.toml")), Vec::new())
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(error, ConfigError::MissingFile { .. }), "{error}");
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DemoSection {
    listen: String,
    limit: u32,
}

impl Validate for DemoSection {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        if !self.listen.is_empty() {
            validate_listen(prefix, "listen", &self.listen, issues);
        }
    }
}

#[test]
fn service_sections_are_typed_by_their_service() {
    let source =
        ConfigSource::from_parts(None, env(&[("TRIGGERS_GATEWAY__LIMIT", "7")])).unwrap_or_else(|e| panic!("{e}"));
    // The shared sections accept the service's section without reading it.
    assert!(source.common().is_ok());
    let section: DemoSection = source.section("gateway").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(section.limit, 7);
    let absent: DemoSection = source.section("router").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(absent.limit, 0);

    let bad = ConfigSource::from_parts(None, env(&[("TRIGGERS_GATEWAY__LISTEN", "nowhere")]))
        .and_then(|s| s.section::<DemoSection>("gateway"))
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(bad.settings(), ["gateway.listen"]);
    let unknown = ConfigSource::from_parts(None, env(&[("TRIGGERS_GATEWAY__LISTN", "x")]))
        .and_then(|s| s.section::<DemoSection>("gateway"))
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(unknown.settings(), ["gateway.listn"]);
    let wrong_type = ConfigSource::from_parts(None, env(&[("TRIGGERS_GATEWAY__LIMIT", "lots")]))
        .and_then(|s| s.section::<DemoSection>("gateway"))
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(wrong_type.settings(), ["gateway.limit"]);
}

#[test]
fn tier_names_are_short() {
    assert_eq!(tier_name(Duration::from_secs(5)), "5s");
    assert_eq!(tier_name(Duration::from_secs(120)), "2m");
    assert_eq!(tier_name(Duration::from_secs(86_400)), "24h");
    assert_eq!(tier_name(Duration::from_millis(1500)), "1500ms");
}
