//! Test support for the services' integration tests: one test's slice of
//! the shared stack of its test binary — its own namespace (topics, tables,
//! consumer groups), provisioned, with a schema registry of its own —,
//! tenants with API keys, and [`Api`], a tenant's client of a gateway.
//!
//! Each service starts itself for tests on a slice (`triggers_gateway::testing`,
//! `triggers_router::testing`, `triggers_persister::testing`, behind their
//! `testkit` feature): this crate depends on no service but the registry,
//! so no crate depends on itself through its tests.
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

/// A tenant's client of one gateway: JSON calls with its API key.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://host:port` of the gateway.
    pub base: String,
    /// The tenant's API key.
    pub key: String,
    /// The HTTP client.
    pub http: reqwest::Client,
}

impl Api {
    /// A client of the gateway at `addr` with `key`.
    pub fn new(addr: std::net::SocketAddr, key: String) -> Self {
        Self {
            base: format!("http://{addr}"),
            key,
            http: reqwest::Client::new(),
        }
    }

    /// Calls `method path` with `key` and an optional JSON body: the status
    /// and the JSON answer (`null` when there is none).
    ///
    /// # Panics
    /// When the gateway does not answer (a test failure).
    pub async fn call_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// [`Api::call_as`] with this client's key.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.call_as(&self.key, method, path, body).await
    }

    /// Ingests `event`; its id.
    ///
    /// # Panics
    /// Unless the gateway answers 202.
    pub async fn ingest(&self, event: serde_json::Value) -> String {
        let (status, accepted) = self.call(reqwest::Method::POST, "/v1/events", Some(event)).await;
        assert_eq!(status, 202, "{accepted}");
        accepted["id"].as_str().unwrap_or_default().to_owned()
    }

    /// Creates a subscription from `body`; the created subscription (with
    /// its secret).
    ///
    /// # Panics
    /// Unless the gateway answers 201.
    pub async fn subscribe(&self, body: serde_json::Value) -> serde_json::Value {
        let (status, created) = self.call(reqwest::Method::POST, "/v1/subscriptions", Some(body)).await;
        assert_eq!(status, 201, "{created}");
        created
    }
}
