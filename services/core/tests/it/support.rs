use triggers_core::CancellationToken;
use triggers_core::config::{CommonConfig, ConfigSource};
use triggers_core::dynamo::Tables;
use triggers_core::provision::{ProvisionReport, provision_all};
use triggers_registry::{RegistryServerConfig, RunningRegistry};
use triggers_stack::TestStack;

/// One test's slice of the shared stack: its own topics and tables.
pub struct TestEnv {
    pub namespace: String,
    pub common: CommonConfig,
    pub tables: Tables,
    pub dynamo: aws_sdk_dynamodb::Client,
}

impl TestEnv {
    pub async fn new() -> Self {
        let stack = TestStack::shared();
        let namespace = stack.namespace();
        let common = ConfigSource::from_parts(None, Vec::new())
            .map(|s| s.with_toml(&stack.config_toml(&namespace)))
            .and_then(|s| s.common())
            .unwrap();
        let tables = Tables::new(&common.dynamodb.table_prefix);
        let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
        Self {
            namespace,
            common,
            tables,
            dynamo,
        }
    }

    pub fn schemas_topic(&self) -> String {
        format!("{}._schemas", self.namespace)
    }

    pub async fn provision(&self) -> ProvisionReport {
        provision_all(
            &self.common.kafka,
            &self.common.topics,
            &self.schemas_topic(),
            &self.dynamo,
            &self.tables,
        )
        .await
        .expect("provisioning")
    }

    /// Provisions, then starts a registry on a free port; returns the common
    /// config pointing at it.
    pub async fn with_registry(&mut self, shutdown: CancellationToken) -> RunningRegistry {
        self.provision().await;
        let config = RegistryServerConfig {
            listen: "127.0.0.1:0".to_owned(),
            topic: self.schemas_topic(),
            ..RegistryServerConfig::default()
        };
        let registry = triggers_registry::start(&self.common.kafka, &config, shutdown)
            .await
            .expect("registry");
        self.common.schema_registry.url = registry.url();
        registry
    }
}

/// A quarantine on `<topic>.quarantine` (tests that expect none never read it).
pub fn quarantine(kafka: &triggers_core::config::KafkaConfig, topic: &str) -> triggers_core::quarantine::Quarantine {
    let producer = triggers_core::kafka::producer(kafka, "test").unwrap();
    triggers_core::quarantine::Quarantine::new(producer, format!("{topic}.quarantine"), "test")
}

/// `kafka` with idle pacing: looks every `interval` once idle for 200 ms.
pub fn paced(
    kafka: &triggers_core::config::KafkaConfig,
    interval: std::time::Duration,
) -> triggers_core::config::KafkaConfig {
    triggers_core::config::KafkaConfig {
        idle_fetch_interval: interval,
        idle_after: std::time::Duration::from_millis(200),
        ..kafka.clone()
    }
}

/// `len` pseudo-random printable characters less the backslashes drawn
/// among them (about 1 in 88; none of them a backslash or a quote, so a
/// JSON string of them is as long): they deflate by a fifth at most.
pub fn noise(len: usize) -> String {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'#' + (state % 88) as u8)
        })
        .filter(|c| *c != '\\')
        .collect()
}
