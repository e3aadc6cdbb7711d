//! The pipeline as separate processes: Tansu, DynamoDB Local, the schema
//! registry, two gateways behind one address, router, persister and
//! deliverer, each started from its own binary with one shared
//! configuration file, and each killable with SIGKILL and restartable on
//! the same port and data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use triggers_core::config::{CommonConfig, ConfigSource};
use triggers_core::dynamo::Tables;
use triggers_local::Demo;
use triggers_stack::{ChildProcess, Tools, free_port};

/// A part of the pipeline the suite can kill and start again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// Tansu.
    Broker,
    /// DynamoDB Local.
    Dynamo,
    /// The schema registry.
    Registry,
    /// The first gateway.
    GatewayA,
    /// The second gateway, behind the same address.
    GatewayB,
    /// The router.
    Router,
    /// The persister.
    Persister,
    /// The deliverer.
    Deliverer,
}

impl Part {
    /// The part's name in logs and the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::Dynamo => "dynamodb",
            Self::Registry => "registry",
            Self::GatewayA => "gateway-a",
            Self::GatewayB => "gateway-b",
            Self::Router => "router",
            Self::Persister => "persister",
            Self::Deliverer => "deliverer",
        }
    }

    fn binary(self) -> Option<&'static str> {
        match self {
            Self::Broker | Self::Dynamo => None,
            Self::Registry => Some("triggers-registry"),
            Self::GatewayA | Self::GatewayB => Some("triggers-gateway"),
            Self::Router => Some("triggers-router"),
            Self::Persister => Some("triggers-persister"),
            Self::Deliverer => Some("triggers-deliverer"),
        }
    }

    /// The services, in start order.
    pub const SERVICES: [Part; 6] = [
        Part::Registry,
        Part::GatewayA,
        Part::GatewayB,
        Part::Router,
        Part::Persister,
        Part::Deliverer,
    ];
}

/// Ports of every part.
#[derive(Debug, Clone)]
pub struct Ports {
    /// Tansu.
    pub kafka: u16,
    /// DynamoDB Local.
    pub dynamo: u16,
    /// Per service: its listen port (the gateway's API port, the others'
    /// operations port).
    pub services: BTreeMap<Part, u16>,
    /// The address clients use: both gateways behind it.
    pub proxy: u16,
    /// The webhook receiver.
    pub receiver: u16,
}

impl Ports {
    fn free() -> anyhow::Result<Self> {
        let mut services = BTreeMap::new();
        for part in Part::SERVICES {
            services.insert(part, free_port()?);
        }
        Ok(Self {
            kafka: free_port()?,
            dynamo: free_port()?,
            services,
            proxy: free_port()?,
            receiver: free_port()?,
        })
    }

    /// The port of a service.
    pub fn of(&self, part: Part) -> u16 {
        match part {
            Part::Broker => self.kafka,
            Part::Dynamo => self.dynamo,
            service => self.services.get(&service).copied().unwrap_or_default(),
        }
    }
}

/// The running pipeline.
pub struct Cluster {
    tools: Tools,
    bin_dir: PathBuf,
    dir: PathBuf,
    config_file: PathBuf,
    /// Every port.
    pub ports: Ports,
    /// The shared configuration, as the services read it.
    pub common: CommonConfig,
    /// The tenant, its API key and the subscription to the receiver.
    pub demo: Demo,
    processes: BTreeMap<Part, ChildProcess>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

/// The configuration every process reads (`TRIGGERS_CONFIG`): production
/// defaults except what one machine needs (one broker, loopback targets,
/// short fetch waits because Tansu answers a fetch only after its full
/// wait), plus `overrides` (`[section]` TOML).
fn config_toml(ports: &Ports, overrides: &str) -> String {
    let service = |part: Part| format!("127.0.0.1:{}", ports.of(part));
    format!(
        r#"
[kafka]
bootstrap_servers = "127.0.0.1:{kafka}"
# Longer than any broker outage the suite makes: Tansu 0.6.0's storage
# panics on the epoch librdkafka's idempotent producers bump when records
# time out (docs/reliability.md). MSK needs no such thing (the default is 5 s).
produce_timeout = "30s"
fetch_wait_max = "20ms"
idle_fetch_interval = "500ms"
idle_after = "2s"

[topics]
partitions = 3
replication_factor = 1
min_insync_replicas = 1

[dynamodb]
endpoint = "http://127.0.0.1:{dynamo}"
access_key_id = "local"
secret_access_key = "local"

[schema_registry]
url = "http://{registry}"

[registry_server]
listen = "{registry}"

[gateway]
default_rate_limit = 1000000

[router]
listen = "{router}"

[persister]
listen = "{persister}"

[deliverer]
listen = "{deliverer}"
allow_networks = ["127.0.0.0/8"]
only_allowed_networks = true

[telemetry]
log_format = "json"
log_level = "info,aws_config=warn,rdkafka=warn"
{overrides}
"#,
        kafka = ports.kafka,
        dynamo = ports.dynamo,
        registry = service(Part::Registry),
        router = service(Part::Router),
        persister = service(Part::Persister),
        deliverer = service(Part::Deliverer),
    )
}

impl Cluster {
    /// Starts everything in `dir` with the service binaries of `bin_dir`,
    /// provisions topics and tables and seeds a tenant whose subscription
    /// delivers every event to `http://127.0.0.1:<receiver>/hook`.
    pub async fn start(
        dir: &Path,
        bin_dir: &Path,
        overrides: &str,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        for part in Part::SERVICES {
            let binary = part.binary().unwrap_or_default();
            if !bin_dir.join(binary).is_file() {
                bail!(
                    "{} is missing: build the services first (cargo build --workspace --bins)",
                    bin_dir.join(binary).display()
                );
            }
        }
        let ports = Ports::free()?;
        let config_file = dir.join("triggers.toml");
        let text = config_toml(&ports, overrides);
        std::fs::write(&config_file, &text).with_context(|| config_file.display().to_string())?;
        let source = ConfigSource::from_layers(Some(&text), None, env)?;
        let common = source.common()?;
        let registry: triggers_registry::RegistryServerConfig = source.section("registry_server")?;
        let mut cluster = Self {
            tools: Tools::locate()?,
            bin_dir: bin_dir.to_owned(),
            dir: dir.to_owned(),
            config_file,
            ports,
            common,
            demo: Demo {
                tenant_id: String::new(),
                api_key: String::new(),
                subscription_id: String::new(),
                admin_token: String::new(),
                target_url: String::new(),
                jwt_secret: String::new(),
            },
            processes: BTreeMap::new(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
        };
        cluster.start_part(Part::Broker).await?;
        cluster.start_part(Part::Dynamo).await?;
        let dynamo = triggers_core::dynamo::client(&cluster.common.dynamodb).await;
        let tables = Tables::new(&cluster.common.dynamodb.table_prefix);
        triggers_core::provision::provision_all(
            &cluster.common.kafka,
            &cluster.common.topics,
            &registry.topic,
            &dynamo,
            &tables,
        )
        .await?;
        cluster.start_part(Part::Registry).await?;
        let target = format!("http://127.0.0.1:{}/hook", cluster.ports.receiver);
        cluster.demo = triggers_local::seed::ensure(dir, &cluster.common, &dynamo, &tables, &target).await?;
        for part in Part::SERVICES.into_iter().skip(1) {
            cluster.start_part(part).await?;
        }
        Ok(cluster)
    }

    /// Starts `part` and waits until it is ready (services: `/readyz` 200).
    pub async fn start_part(&mut self, part: Part) -> anyhow::Result<()> {
        let log = self.dir.join("log").join(format!("{}.log", part.name()));
        let process = match part {
            Part::Broker => {
                let (tools, dir, port) = (self.tools.clone(), self.dir.join("tansu"), self.ports.kafka);
                tokio::task::spawn_blocking(move || triggers_stack::start_tansu(&tools, &dir, port, &log)).await??
            }
            Part::Dynamo => {
                let (tools, dir, port) = (self.tools.clone(), self.dir.join("dynamodb"), self.ports.dynamo);
                tokio::task::spawn_blocking(move || triggers_stack::start_dynamodb_local(&tools, &dir, port, &log))
                    .await??
            }
            service => {
                let binary = self.bin_dir.join(service.binary().unwrap_or_default());
                let mut env = vec![("TRIGGERS_CONFIG".to_owned(), self.config_file.display().to_string())];
                // A restarted process keeps its name, as a restarted container
                // keeps its pod's (the chart's static membership).
                env.push((
                    "TRIGGERS_KAFKA__GROUP_INSTANCE_ID".to_owned(),
                    service.name().to_owned(),
                ));
                if matches!(service, Part::GatewayA | Part::GatewayB) {
                    env.extend([
                        (
                            "TRIGGERS_GATEWAY__LISTEN".to_owned(),
                            format!("127.0.0.1:{}", self.ports.of(service)),
                        ),
                        (
                            "TRIGGERS_GATEWAY__ADMIN_TOKEN".to_owned(),
                            self.demo.admin_token.clone(),
                        ),
                        ("TRIGGERS_GATEWAY__JWT_SECRET".to_owned(), self.demo.jwt_secret.clone()),
                    ]);
                }
                let process = ChildProcess::spawn_with_env(part.name(), &binary, &[], &env, &self.dir, &log)?;
                self.processes.insert(part, process);
                return self.wait_ready(part).await;
            }
        };
        self.processes.insert(part, process);
        Ok(())
    }

    /// Waits until a service answers `/readyz` with 200.
    async fn wait_ready(&mut self, part: Part) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.ports.of(part));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if let Some(process) = self.processes.get_mut(&part)
                && !process.is_running()
            {
                bail!("{} exited while starting; see {}/log", part.name(), self.dir.display());
            }
            if Instant::now() >= deadline {
                bail!("{} not ready within 90 s; see {}/log", part.name(), self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills `part` with SIGKILL (its whole process group), no warning.
    pub async fn kill(&mut self, part: Part) {
        if let Some(mut process) = self.processes.remove(&part) {
            eprintln!("[faults] kill -9 {}", part.name());
            let _ = tokio::task::spawn_blocking(move || process.kill()).await;
        }
    }

    /// Freezes `part` (SIGSTOP to its process group) or lets it run on
    /// (SIGCONT). A frozen consumer keeps its state and its position and
    /// works through what it missed when it runs again: a backlog.
    pub fn freeze(&self, part: Part, frozen: bool) -> anyhow::Result<()> {
        let process = self
            .processes
            .get(&part)
            .with_context(|| format!("{} is not running", part.name()))?;
        process.signal(if frozen { "STOP" } else { "CONT" })?;
        Ok(())
    }

    /// Lets every frozen part run on (SIGCONT to all; a running part
    /// ignores it).
    pub fn thaw(&self) {
        for part in self.processes.keys() {
            if let Err(e) = self.freeze(*part, false) {
                eprintln!("[faults] {e:#}");
            }
        }
    }

    /// Whether Tansu's log shows its storage task panicking (it then
    /// answers nothing but errors while its process runs on).
    pub fn broker_panicked(&self) -> bool {
        std::fs::read_to_string(self.dir.join("log").join("broker.log"))
            .is_ok_and(|log| log.contains("more or less than one row"))
    }

    /// The process group of `part` (see [`rss`]).
    pub fn group(&self, part: Part) -> Option<u32> {
        self.processes.get(&part).map(ChildProcess::group)
    }

    /// Whether every part is still running (none crashed by itself).
    pub fn crashed(&mut self) -> Vec<&'static str> {
        self.processes
            .iter_mut()
            .filter_map(|(part, process)| (!process.is_running()).then_some(part.name()))
            .collect()
    }

    /// Stops everything gracefully: services first (they drain and store
    /// offsets), then the registry, the broker and DynamoDB Local.
    pub async fn stop(mut self) {
        let order = [
            Part::GatewayA,
            Part::GatewayB,
            Part::Router,
            Part::Persister,
            Part::Deliverer,
            Part::Registry,
            Part::Broker,
            Part::Dynamo,
        ];
        for part in order {
            if let Some(mut process) = self.processes.remove(&part) {
                let _ = tokio::task::spawn_blocking(move || process.stop()).await;
            }
        }
    }
}

/// The CPU time this process (the suite: its load, receiver and proxy) has
/// used so far.
pub fn own_cpu() -> Duration {
    triggers_core::telemetry::process_cpu_time().unwrap_or_default()
}
