//! One real stack per test binary, shared by its tests.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::{ChildProcess, StackError, Tools, free_port, start_dynamodb_local, start_tansu};

/// Tansu and DynamoDB Local on free ports, with their data in a temporary
/// folder that goes away with the stack.
#[derive(Debug)]
pub struct TestStack {
    /// `127.0.0.1:<port>` of Tansu.
    pub kafka_bootstrap: String,
    /// `http://127.0.0.1:<port>` of DynamoDB Local.
    pub dynamodb_endpoint: String,
    tools: Tools,
    tansu_port: u16,
    tansu: Mutex<Option<ChildProcess>>,
    _dynamodb: ChildProcess,
    dir: tempfile::TempDir,
}

impl TestStack {
    /// The stack of this test binary, started on first use.
    ///
    /// # Panics
    /// When the stack cannot start (tools missing: run `scripts/bootstrap`);
    /// no test can run without it.
    pub fn shared() -> &'static TestStack {
        static STACK: OnceLock<TestStack> = OnceLock::new();
        STACK.get_or_init(|| match TestStack::start() {
            Ok(stack) => stack,
            Err(e) => panic!("cannot start the test stack: {e}"),
        })
    }

    /// A private stack, for tests that stop or restart its parts.
    pub fn start() -> Result<Self, StackError> {
        let tools = Tools::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("triggers-test-")
            .tempdir()
            .map_err(|e| StackError::io("create temp dir", e))?;
        let tansu_port = free_port()?;
        let tansu = start_tansu(
            &tools,
            &dir.path().join("tansu"),
            tansu_port,
            &dir.path().join("tansu.log"),
        )?;
        let dynamo_port = free_port()?;
        let dynamodb = start_dynamodb_local(
            &tools,
            &dir.path().join("dynamodb"),
            dynamo_port,
            &dir.path().join("dynamodb.log"),
        )?;
        Ok(Self {
            kafka_bootstrap: format!("127.0.0.1:{tansu_port}"),
            dynamodb_endpoint: format!("http://127.0.0.1:{dynamo_port}"),
            tools,
            tansu_port,
            tansu: Mutex::new(Some(tansu)),
            _dynamodb: dynamodb,
            dir,
        })
    }

    /// The programs the stack runs.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// A fresh name for one test's topics (`<ns>.events`, …) and tables
    /// (`<ns>_events`, …), so tests never see each other's data.
    pub fn namespace(&self) -> String {
        format!("t{}", ulid::Ulid::new().to_string().to_ascii_lowercase())
    }

    /// Configuration (TOML) pointing every section at this stack, with the
    /// namespace's topics and tables, short retry tiers and quick fetches.
    pub fn config_toml(&self, namespace: &str) -> String {
        format!(
            r#"
[kafka]
bootstrap_servers = "{kafka}"
fetch_wait_max = "10ms"
# As locally: idle consumers pause (so every test exercises core::pacing);
# writes of the test process wake their readers, and records written by
# other clients wait at most a second.
idle_fetch_interval = "1s"
idle_after = "500ms"
commit_interval = "100ms"
session_timeout = "6s"

[topics]
namespace = "{namespace}"
partitions = 2
# One broker.
replication_factor = 1
min_insync_replicas = 1
retry_tiers = ["1s", "2s", "4s"]

[dynamodb]
endpoint = "{dynamo}"
region = "us-east-1"
table_prefix = "{namespace}_"
access_key_id = "local"
secret_access_key = "local"

[telemetry]
log_level = "warn"
log_format = "pretty"
"#,
            kafka = self.kafka_bootstrap,
            dynamo = self.dynamodb_endpoint,
        )
    }

    /// Stops the broker (the data stays), as in an outage.
    pub fn stop_kafka(&self) {
        if let Some(mut tansu) = self.lock_tansu().take() {
            tansu.stop();
        }
    }

    /// Kills the broker with SIGKILL (the data stays), as in a crash.
    pub fn kill_kafka(&self) {
        if let Some(mut tansu) = self.lock_tansu().take() {
            tansu.kill();
        }
    }

    /// Starts the broker again on the same port and data.
    pub fn start_kafka(&self) -> Result<(), StackError> {
        let mut guard = self.lock_tansu();
        if guard.is_none() {
            *guard = Some(start_tansu(
                &self.tools,
                &self.dir.path().join("tansu"),
                self.tansu_port,
                &self.dir.path().join("tansu.log"),
            )?);
        }
        Ok(())
    }

    /// The folder holding the stack's data and logs.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn lock_tansu(&self) -> MutexGuard<'_, Option<ChildProcess>> {
        match self.tansu.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}
