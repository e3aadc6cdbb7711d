//! Test support for the services' integration tests: one test's slice of
//! the shared stack of its test binary — its own namespace (topics, tables,
//! consumer groups), provisioned, with a schema registry of its own — and
//! tenants with API keys.
#![forbid(unsafe_code)]

use triggers_core::CancellationToken;
use triggers_core::config::{CommonConfig, ConfigSource};
use triggers_core::dynamo::Tables;
use triggers_core::event::now_ms;
use triggers_core::ids::TenantId;
use triggers_core::tenancy::{self, Tenant};
use triggers_stack::TestStack;

/// One test's topics, tables and registry on a stack.
#[derive(Debug)]
pub struct Slice {
    /// Prefix of its topics, tables and consumer groups.
    pub namespace: String,
    /// Configuration pointing at the stack and the slice's registry.
    pub common: CommonConfig,
    /// Its tables.
    pub tables: Tables,
    /// A DynamoDB client.
    pub dynamo: aws_sdk_dynamodb::Client,
    /// Stops the slice's registry (and whatever the test starts with it).
    pub shutdown: CancellationToken,
}

impl Drop for Slice {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fresh, provisioned slice of `stack` with a running registry.
///
/// # Panics
/// When the stack does not answer (a test failure).
pub async fn slice(stack: &TestStack) -> Slice {
    let namespace = stack.namespace();
    let mut common = ConfigSource::from_parts(None, Vec::new())
        .map(|s| s.with_toml(&stack.config_toml(&namespace)))
        .and_then(|s| s.common())
        .unwrap_or_else(|e| panic!("{e}"));
    let tables = Tables::new(&common.dynamodb.table_prefix);
    let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
    let schemas_topic = format!("{namespace}._schemas");
    triggers_core::provision::provision_all(&common.kafka, &common.topics, &schemas_topic, &dynamo, &tables)
        .await
        .unwrap_or_else(|e| panic!("provisioning: {e}"));
    let shutdown = CancellationToken::new();
    let registry = triggers_registry::start(
        &common.kafka,
        &triggers_registry::RegistryServerConfig {
            listen: "127.0.0.1:0".to_owned(),
            topic: schemas_topic,
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap_or_else(|e| panic!("registry: {e}"));
    common.schema_registry.url = registry.url();
    Slice {
        namespace,
        common,
        tables,
        dynamo,
        shutdown,
    }
}

impl Slice {
    /// A consumer group name of this slice (tests running at once must not
    /// share groups: they would rebalance each other).
    pub fn group(&self, service: &str) -> String {
        format!("{}-{service}", self.namespace)
    }

    /// A new tenant with `retention_days`, and an API key for it.
    ///
    /// # Panics
    /// When DynamoDB does not answer (a test failure).
    pub async fn tenant_with_key(&self, retention_days: Option<u32>) -> (TenantId, String) {
        let tenant = Tenant {
            id: TenantId::new(),
            name: "test".to_owned(),
            created_at: now_ms(),
            rate_limit: None,
            retention_days,
        };
        tenancy::put_tenant(&self.dynamo, &self.tables, &tenant)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let key = tenancy::create_api_key(&self.dynamo, &self.tables, &tenant.id)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (tenant.id, key.key)
    }
}
