//! The whole Triggers pipeline on one machine: Tansu (Kafka API, SQLite
//! under the data folder), DynamoDB Local, the dev schema registry, the
//! gateway, router, persister and deliverer (in-process), and a demo webhook
//! receiver. It provisions every topic and table, seeds a demo tenant, API
//! key and subscription, and writes the endpoints to `<data>/local.env`.
//!
//! A second start on the same data folder keeps the data and the demo
//! credentials. Stopping stops intake first: the services drain and store
//! their offsets, then the broker and DynamoDB Local stop.
#![forbid(unsafe_code)]

pub mod receiver;
pub mod seed;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use triggers_core::CancellationToken;
use triggers_core::config::{CommonConfig, ConfigError, ConfigSource};
use triggers_core::dynamo::Tables;
use triggers_stack::{ChildProcess, StackError, Tools, free_port};

pub use seed::Demo;

/// Ports and folders of a local stack.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Where data, logs and `local.env` go (`var/`).
    pub data_dir: PathBuf,
    /// An optional configuration file layered over the local defaults.
    pub config_file: Option<PathBuf>,
    /// Tansu's port.
    pub kafka_port: u16,
    /// DynamoDB Local's port.
    pub dynamodb_port: u16,
    /// The schema registry's port.
    pub registry_port: u16,
    /// The gateway's port.
    pub gateway_port: u16,
    /// The router's operations port.
    pub router_port: u16,
    /// The persister's operations port.
    pub persister_port: u16,
    /// The deliverer's operations port.
    pub deliverer_port: u16,
    /// The demo receiver's port.
    pub receiver_port: u16,
    /// Start a Prometheus on this port, scraping every service (every
    /// second, with the alert rules loaded); none when `None`.
    pub prometheus_port: Option<u16>,
    /// Environment variables for configuration (normally the process's).
    pub env: Vec<(String, String)>,
}

impl LocalOptions {
    /// The default ports, data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            config_file: None,
            kafka_port: 9092,
            dynamodb_port: 8000,
            registry_port: 8081,
            gateway_port: 8080,
            router_port: 9102,
            persister_port: 9103,
            deliverer_port: 9104,
            receiver_port: 9000,
            prometheus_port: None,
            env: Vec::new(),
        }
    }

    /// Free ports for every component (no Prometheus), data in `data_dir`,
    /// no environment settings: a stack beside others (tests, benchmarks).
    pub fn on_free_ports(data_dir: impl Into<PathBuf>) -> Result<Self, StackError> {
        Ok(Self {
            kafka_port: free_port()?,
            dynamodb_port: free_port()?,
            registry_port: free_port()?,
            gateway_port: free_port()?,
            router_port: free_port()?,
            persister_port: free_port()?,
            deliverer_port: free_port()?,
            receiver_port: free_port()?,
            ..Self::new(data_dir)
        })
    }
}

/// How often [`start_on_free_ports`] tries new ports after losing one.
const PORT_RACE_TRIES: usize = 3;

/// Starts a stack on free ports, `options(attempt)` making each try's
/// options (usually [`LocalOptions::on_free_ports`]). Ports are picked free
/// and bound a moment later; an outgoing connection of the starting stack
/// can take one in between (the ephemeral range), so a start that loses
/// that race is tried again on new ports.
pub async fn start_on_free_ports(
    mut options: impl FnMut(usize) -> Result<LocalOptions, LocalError>,
) -> Result<LocalStack, LocalError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let options = options(attempt)?;
        let source = load_config(&options)?;
        match start(&options, &source).await {
            Ok(stack) => return Ok(stack),
            Err(e) if attempt < PORT_RACE_TRIES && e.to_string().contains("Address already in use") => {
                tracing::warn!(error = %e, "the start lost a port race; trying new ports");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The local stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A component process failed.
    #[error(transparent)]
    Stack(#[from] StackError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Topics or tables could not be created.
    #[error(transparent)]
    Provision(#[from] triggers_core::provision::ProvisionError),
    /// A service did not start.
    #[error("{service} did not start: {message}")]
    Service {
        /// Which.
        service: &'static str,
        /// Why.
        message: String,
    },
    /// Seeding the demo data failed.
    #[error("seeding demo data: {0}")]
    Seed(String),
    /// Writing a file under the data folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The endpoints and demo credentials of a running stack.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `http://127.0.0.1:<port>` of the gateway.
    pub gateway_url: String,
    /// The schema registry.
    pub registry_url: String,
    /// Tansu's bootstrap address.
    pub kafka_bootstrap: String,
    /// DynamoDB Local.
    pub dynamodb_endpoint: String,
    /// The demo receiver.
    pub demo_receiver_url: String,
    /// The operations ports of router, persister, deliverer.
    pub ops_urls: Vec<(&'static str, String)>,
    /// Prometheus, when started.
    pub prometheus_url: Option<String>,
}

type ServiceTask = (&'static str, BoxFuture<'static, Result<(), String>>);

/// A running local stack.
pub struct LocalStack {
    /// Where everything is.
    pub endpoints: Endpoints,
    /// The demo tenant, key and subscription.
    pub demo: Demo,
    /// The effective shared configuration.
    pub common: CommonConfig,
    /// Webhooks the demo receiver got.
    pub received: receiver::Received,
    services: Vec<ServiceTask>,
    services_shutdown: CancellationToken,
    registry: ServiceTask,
    registry_shutdown: CancellationToken,
    processes: Vec<ChildProcess>,
}

impl std::fmt::Debug for LocalStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStack")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// The local defaults: quick fetches, readable logs, loopback allowed.
fn local_toml(options: &LocalOptions) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = "127.0.0.1:{kafka}"
# Tansu answers a fetch only after its full wait: keep it short for latency,
# and let idle consumers pause instead of polling (see core::pacing). Writes
# of this process (every service runs in it) wake their readers at once; the
# interval only bounds how late a record from elsewhere is seen.
fetch_wait_max = "5ms"
idle_fetch_interval = "2s"
idle_after = "1s"

[topics]
partitions = 3
# One broker.
replication_factor = 1
min_insync_replicas = 1

[dynamodb]
endpoint = "http://127.0.0.1:{dynamo}"
access_key_id = "local"
secret_access_key = "local"

[schema_registry]
url = "http://127.0.0.1:{registry}"

[deliverer]
# The demo receiver is on loopback: allow it past the SSRF guard, and
# nothing else: a local stack sends no webhook off this machine (set
# TRIGGERS_DELIVERER__ONLY_ALLOWED_NETWORKS=false to reach public URLs).
allow_networks = ["127.0.0.0/8", "::1/128"]
only_allowed_networks = true

[telemetry]
log_format = "pretty"
log_level = "info,actix_server=warn,aws_config=warn,rdkafka=warn,triggers_core::kafka=warn"
"#,
        kafka = options.kafka_port,
        dynamo = options.dynamodb_port,
        registry = options.registry_port,
    )
}

/// Loads the configuration the stack runs with: defaults, local defaults,
/// the file, the environment.
pub fn load_config(options: &LocalOptions) -> Result<ConfigSource, ConfigError> {
    ConfigSource::from_layers(
        Some(&local_toml(options)),
        options.config_file.as_deref(),
        options.env.clone(),
    )
}

/// Starts everything; returns once every part answers.
pub async fn start(options: &LocalOptions, source: &ConfigSource) -> Result<LocalStack, LocalError> {
    let common = source.common()?;
    let tools = Tools::locate()?;
    let data = &options.data_dir;
    create_dir(data)?;
    let logs = data.join("log");

    tracing::info!(port = options.kafka_port, "starting Tansu");
    let tansu = triggers_stack::start_tansu(&tools, &data.join("tansu"), options.kafka_port, &logs.join("tansu.log"))?;
    tracing::info!(port = options.dynamodb_port, "starting DynamoDB Local");
    let dynamodb = triggers_stack::start_dynamodb_local(
        &tools,
        &data.join("dynamodb"),
        options.dynamodb_port,
        &logs.join("dynamodb.log"),
    )?;
    let mut processes = vec![dynamodb, tansu];

    let mut registry_config: triggers_registry::RegistryServerConfig = source.section("registry_server")?;
    registry_config.listen = format!("127.0.0.1:{}", options.registry_port);
    let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
    let tables = Tables::new(&common.dynamodb.table_prefix);
    let report = triggers_core::provision::provision_all(
        &common.kafka,
        &common.topics,
        &registry_config.topic,
        &dynamo,
        &tables,
    )
    .await?;
    tracing::info!(
        topics_created = report.topics_created.len(),
        tables_created = report.tables_created.len(),
        "provisioned"
    );

    let shutdown = CancellationToken::new();
    let mut services: Vec<ServiceTask> = Vec::new();
    let service_error = |service: &'static str| {
        move |e: &dyn std::fmt::Display| LocalError::Service {
            service,
            message: e.to_string(),
        }
    };

    // The registry stops last: services that drain at shutdown may still
    // look up or register schemas.
    let registry_shutdown = CancellationToken::new();
    let registry = triggers_registry::start(&common.kafka, &registry_config, registry_shutdown.clone())
        .await
        .map_err(|e| service_error("registry")(&e))?;
    let registry: ServiceTask = ("registry", Box::pin(async move { flatten(registry.task.await) }));

    let receiver_url = format!("http://127.0.0.1:{}/webhooks/demo", options.receiver_port);
    let demo = seed::ensure(data, &common, &dynamo, &tables, &receiver_url).await?;

    let mut gateway_config: triggers_gateway::GatewayConfig = source.section("gateway")?;
    gateway_config.listen = format!("127.0.0.1:{}", options.gateway_port);
    gateway_config.admin_token = Some(demo.admin_token.clone());
    gateway_config.jwt_secret.get_or_insert_with(|| demo.jwt_secret.clone());
    let gateway = triggers_gateway::start(&common, &gateway_config, shutdown.clone())
        .await
        .map_err(|e| service_error("gateway")(&e))?;
    services.push(("gateway", Box::pin(async move { flatten(gateway.task.await) })));

    let mut router_config: triggers_router::RouterConfig = source.section("router")?;
    router_config.listen = format!("127.0.0.1:{}", options.router_port);
    let router = triggers_router::start(&common, &router_config, shutdown.clone())
        .await
        .map_err(|e| service_error("router")(&e))?;
    services.push(("router", Box::pin(async move { flatten(router.task.await) })));

    let mut persister_config: triggers_persister::PersisterConfig = source.section("persister")?;
    persister_config.listen = format!("127.0.0.1:{}", options.persister_port);
    let persister = triggers_persister::start(&common, &persister_config, shutdown.clone())
        .await
        .map_err(|e| service_error("persister")(&e))?;
    services.push(("persister", Box::pin(async move { flatten(persister.task.await) })));

    let mut deliverer_config: triggers_deliverer::DelivererConfig = source.section("deliverer")?;
    deliverer_config.listen = format!("127.0.0.1:{}", options.deliverer_port);
    let deliverer = triggers_deliverer::start(&common, &deliverer_config, shutdown.clone())
        .await
        .map_err(|e| service_error("deliverer")(&e))?;
    services.push(("deliverer", Box::pin(async move { flatten(deliverer.task.await) })));

    let (receiver, received) = receiver::start(&format!("127.0.0.1:{}", options.receiver_port), shutdown.clone())
        .map_err(|e| service_error("demo receiver")(&e))?;
    services.push(("demo receiver", Box::pin(async move { flatten(receiver.task.await) })));

    let mut endpoints = Endpoints {
        gateway_url: format!("http://127.0.0.1:{}", options.gateway_port),
        registry_url: format!("http://127.0.0.1:{}", options.registry_port),
        kafka_bootstrap: common.kafka.bootstrap_servers.clone(),
        dynamodb_endpoint: common.dynamodb.endpoint.clone().unwrap_or_default(),
        demo_receiver_url: receiver_url,
        ops_urls: vec![
            ("router", format!("http://127.0.0.1:{}", options.router_port)),
            ("persister", format!("http://127.0.0.1:{}", options.persister_port)),
            ("deliverer", format!("http://127.0.0.1:{}", options.deliverer_port)),
        ],
        prometheus_url: None,
    };
    if let Some(port) = options.prometheus_port {
        tracing::info!(port, "starting Prometheus");
        // One process hosts every service: one target would show all series;
        // each port is scraped as its service's job all the same, as deployed.
        let mut targets = vec![("gateway", endpoints.gateway_url.clone())];
        targets.extend(endpoints.ops_urls.iter().map(|(name, url)| (*name, url.clone())));
        let prometheus = triggers_stack::start_prometheus(
            &data.join("prometheus"),
            port,
            &targets,
            std::time::Duration::from_secs(1),
            &logs.join("prometheus.log"),
        )?;
        processes.push(prometheus);
        endpoints.prometheus_url = Some(format!("http://127.0.0.1:{port}"));
    }
    write_env_file(&data.join("local.env"), &endpoints, &demo)?;
    Ok(LocalStack {
        endpoints,
        demo,
        common,
        received,
        services,
        services_shutdown: shutdown,
        registry,
        registry_shutdown,
        processes,
    })
}

fn flatten<E1: std::fmt::Display, E2: std::fmt::Display>(result: Result<Result<(), E1>, E2>) -> Result<(), String> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits for a service that was told to stop.
async fn stop_service((name, task): ServiceTask) {
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(Ok(())) => tracing::info!(service = name, "stopped"),
        Ok(Err(e)) => tracing::warn!(service = name, error = %e, "stopped with an error"),
        Err(_) => tracing::warn!(service = name, "did not stop within 30s"),
    }
}

impl LocalStack {
    /// Stops the services (they drain and store offsets), then the schema
    /// registry, then the broker and DynamoDB Local.
    pub async fn stop(self) {
        self.services_shutdown.cancel();
        for service in self.services {
            stop_service(service).await;
        }
        // Only now: the services above may have looked up schemas while draining.
        self.registry_shutdown.cancel();
        stop_service(self.registry).await;
        let processes = self.processes;
        let stopped = tokio::task::spawn_blocking(move || {
            for mut process in processes {
                tracing::info!(process = process.name(), "stopping");
                process.stop();
            }
        })
        .await;
        if let Err(e) = stopped {
            tracing::warn!(error = %e, "stopping the local processes failed");
        }
    }
}

fn create_dir(path: &Path) -> Result<(), LocalError> {
    std::fs::create_dir_all(path).map_err(|source| LocalError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Shell-quotes a value for `local.env`.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn write_env_file(path: &Path, endpoints: &Endpoints, demo: &Demo) -> Result<(), LocalError> {
    let lines = [
        ("TRIGGERS_GATEWAY_URL", endpoints.gateway_url.as_str()),
        ("TRIGGERS_ADMIN_TOKEN", demo.admin_token.as_str()),
        ("TRIGGERS_DEMO_API_KEY", demo.api_key.as_str()),
        ("TRIGGERS_DEMO_TENANT_ID", &demo.tenant_id),
        ("TRIGGERS_DEMO_SUBSCRIPTION_ID", &demo.subscription_id),
        ("TRIGGERS_KAFKA_BOOTSTRAP", endpoints.kafka_bootstrap.as_str()),
        ("TRIGGERS_REGISTRY_URL", endpoints.registry_url.as_str()),
        ("TRIGGERS_DYNAMODB_ENDPOINT", endpoints.dynamodb_endpoint.as_str()),
        ("TRIGGERS_DEMO_RECEIVER_URL", endpoints.demo_receiver_url.as_str()),
    ];
    let mut text = String::from("# Written by triggers-local; `source` it to reach the local stack.\n");
    for (name, value) in lines {
        text.push_str(&format!("export {name}={}\n", quote(value)));
    }
    std::fs::write(path, text).map_err(|source| LocalError::Io {
        path: path.display().to_string(),
        source,
    })
}
